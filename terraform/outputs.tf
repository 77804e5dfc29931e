output "instance_id" {
  description = "ID of the EC2 instance."
  value       = aws_instance.this.id
}

output "public_ip" {
  description = "Elastic IP of the instance: point domain_name's DNS record here."
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
  description = "Opens a shell on the instance through SSM Session Manager (no SSH needed)."
  value       = "aws ssm start-session --region ${var.aws_region} --target ${aws_instance.this.id}"
}

output "rds_endpoint" {
  description = "Address of the RDS instance (use_rds only), reachable from the instance alone."
  value       = var.use_rds ? aws_db_instance.this[0].address : null
}

output "data_volume_id" {
  description = "The EBS volume holding the container database, its dumps and the secret files (snapshotted daily)."
  value       = aws_ebs_volume.data.id
}
