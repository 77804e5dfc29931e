output "instance_id" {
  description = "ID of the EC2 instance."
  value       = aws_instance.this.id
}

output "public_ip" {
  description = "Elastic IP of the instance: point domain_name's DNS record here (with api_instances > 1, at load_balancer_dns_name instead: this is the singleton's own address)."
  value       = aws_eip.this.public_ip
}

output "dashboard_url" {
  description = "The live dashboard."
  value       = "${local.public_origin}/"
}

output "api_url" {
  description = "The REST/SSE API (interactive docs at /docs)."
  value       = "${local.public_origin}/api/v1"
}

output "ssm_shell_command" {
  description = "Opens a shell on the instance (with api_instances > 1, the singleton) through SSM Session Manager (no SSH needed)."
  value       = "aws ssm start-session --region ${var.aws_region} --target ${aws_instance.this.id}"
}

output "api_token_command" {
  description = "Prints the API's write tokens (one a line; Authorization: Bearer <token>), from the SSM parameter the instance made at its first start. Rotate by putting two lines there (aws ssm put-parameter --overwrite), then `sudo systemctl reload stockstreamer` on each instance (docs/deploy.md)."
  value       = "aws ssm get-parameter --region ${var.aws_region} --name ${local.api_token_parameter} --with-decryption --query Parameter.Value --output text"
}

output "grafana_url" {
  description = "Grafana (observability only): on the HTTPS site under /grafana/ with domain_name, else on localhost while grafana_tunnel_command runs. User admin; the password is /var/lib/stockstreamer/secrets/grafana-admin-password on the instance."
  value       = !var.observability ? null : local.grafana_public ? "${local.public_origin}/grafana/" : "http://localhost:3000/"
}

output "grafana_tunnel_command" {
  description = "Forwards localhost:3000 to Grafana on the instance's loopback through SSM Session Manager (observability only); needs the Session Manager plugin."
  value       = var.observability ? "aws ssm start-session --region ${var.aws_region} --target ${aws_instance.this.id} --document-name AWS-StartPortForwardingSession --parameters '{\"portNumber\":[\"3000\"],\"localPortNumber\":[\"3000\"]}'" : null
}

output "rds_endpoint" {
  description = "Address of the RDS instance (use_rds only), reachable from the instance alone."
  value       = var.use_rds ? aws_db_instance.this[0].address : null
}

output "data_volume_id" {
  description = "The EBS volume holding the container database, its dumps and the secret files (snapshotted daily)."
  value       = aws_ebs_volume.data.id
}

output "load_balancer_dns_name" {
  description = "The load balancer's DNS name (api_instances > 1): point domain_name here, with a CNAME record (or a Route 53 alias)."
  value       = local.scale_out ? aws_lb.web[0].dns_name : null
}

output "acm_validation_records" {
  description = "The DNS records that prove domain_name to ACM (api_instances > 1): create each in the domain's zone; `terraform apply` waits for them to validate the load balancer's certificate."
  value = local.scale_out ? flatten([
    for certificate in aws_acm_certificate.web : [
      for option in certificate.domain_validation_options : {
        name  = option.resource_record_name
        type  = option.resource_record_type
        value = option.resource_record_value
      }
    ]
  ]) : null
}

output "api_autoscaling_group" {
  description = "The Auto Scaling group of the API instances (api_instances > 1): `aws autoscaling describe-auto-scaling-groups --auto-scaling-group-names <it>` lists them, for `aws ssm start-session --target <instance id>`."
  value       = local.scale_out ? aws_autoscaling_group.web[0].name : null
}
