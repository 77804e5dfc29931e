# `terraform test`: plans and applies against a mocked AWS provider (no network, no credentials)
# and checks what the deployment promises: exposure, IMDSv2, encryption, the elastic IP, an
# instance policy that reaches only what the stack needs, HTTPS unless plain HTTP is asked for,
# a deployed commit, and an instance whose memory holds the containers' limits; and with
# api_instances > 1, the load balancer, the API instances and who may reach whom.

mock_provider "aws" {
  # Values the provider itself validates, where the mock's random strings would not pass.
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::111122223333:role/mock" }
  }

  override_data {
    target = data.aws_ssm_parameter.ami
    values = { insecure_value = "ami-0123456789abcdef0" }
  }
  # The default VPC's default subnets, one per availability zone.
  override_data {
    target = data.aws_subnets.default
    values = { ids = ["subnet-0c", "subnet-0a", "subnet-0b"] }
  }
  override_data {
    target = data.aws_subnet.instance
    values = { vpc_id = "vpc-0123", availability_zone = "us-east-1a" }
  }
  override_data {
    target = data.aws_subnets.vpc
    values = { ids = ["subnet-0a", "subnet-0b"] }
  }
  # The load balancer's subnets (scale-out): the default VPC's, in two availability zones.
  override_data {
    target = data.aws_subnet.alb["subnet-0a"]
    values = { vpc_id = "vpc-0123", cidr_block = "172.31.16.0/20", availability_zone = "us-east-1a" }
  }
  override_data {
    target = data.aws_subnet.alb["subnet-0b"]
    values = { vpc_id = "vpc-0123", cidr_block = "172.31.0.0/20", availability_zone = "us-east-1b" }
  }
  override_data {
    target = data.aws_ssm_parameter.web_ami
    values = { insecure_value = "ami-0fedcba9876543210" }
  }
  # A t3.small's memory, for the API instances.
  override_data {
    target = data.aws_ec2_instance_type.web
    values = { memory_size = 2048 }
  }
  override_data {
    target = data.aws_caller_identity.current
    values = { account_id = "111122223333" }
  }
  override_data {
    target = data.aws_partition.current
    values = { partition = "aws" }
  }
  # A t3.medium's memory (the default stack's); runs that pick or name another type override it.
  override_data {
    target = data.aws_ec2_instance_type.this
    values = { memory_size = 4096 }
  }
  mock_resource "aws_lb" {
    defaults = {
      arn      = "arn:aws:elasticloadbalancing:us-east-1:111122223333:loadbalancer/app/stockstreamer-alb/50dc6c495c0c9188"
      dns_name = "stockstreamer-alb-1234567890.us-east-1.elb.amazonaws.com"
    }
  }
  mock_resource "aws_lb_target_group" {
    defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:111122223333:targetgroup/stockstreamer/73e2d6bc24d8a067" }
  }
  mock_resource "aws_lb_listener" {
    defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:111122223333:listener/app/stockstreamer-alb/50dc6c495c0c9188/f2f7dc8efc522ab2" }
  }
  mock_resource "aws_acm_certificate" {
    defaults = {
      arn = "arn:aws:acm:us-east-1:111122223333:certificate/12345678-1234-1234-1234-123456789012"
      domain_validation_options = [{
        domain_name           = "stocks.example.com"
        resource_record_name  = "_0123456789abcdef.stocks.example.com."
        resource_record_type  = "CNAME"
        resource_record_value = "_fedcba9876543210.acm-validations.aws."
      }]
    }
  }
  mock_resource "aws_launch_template" {
    defaults = { id = "lt-0123456789abcdef0", latest_version = 1 }
  }
  mock_resource "aws_acm_certificate_validation" {
    defaults = { certificate_arn = "arn:aws:acm:us-east-1:111122223333:certificate/12345678-1234-1234-1234-123456789012" }
  }
  override_resource {
    target = aws_db_instance.this
    values = {
      address     = "db.example.internal"
      port        = 5432
      resource_id = "db-ABCDEFGHIJKLMNOP"
      master_user_secret = [{
        secret_arn    = "arn:aws:secretsmanager:us-east-1:111122223333:secret:rds!db-1"
        kms_key_id    = "alias/aws/secretsmanager"
        secret_status = "active"
      }]
    }
  }
}

variables {
  repository_url = "https://git.example.com/stockstreamer.git"
  repository_ref = "0123456789abcdef0123456789abcdef01234567"
  domain_name    = "stocks.example.com"
}

run "default_container_database" {
  command = apply

  assert {
    condition = alltrue([
      for rule in concat(
        values(aws_vpc_security_group_ingress_rule.http),
        values(aws_vpc_security_group_ingress_rule.https),
        values(aws_vpc_security_group_ingress_rule.http3),
        values(aws_vpc_security_group_ingress_rule.ssh),
        aws_vpc_security_group_ingress_rule.rds_from_instance,
      ) : rule.cidr_ipv4 != "0.0.0.0/0" || (rule.from_port == rule.to_port && contains([80, 443], rule.from_port))
    ])
    error_message = "Only 80/443 may be open to 0.0.0.0/0."
  }

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.ssh) == 0
    error_message = "No SSH without ssh_cidrs."
  }

  # With a domain: 80 (ACME and the redirect), 443 over TCP and UDP (HTTP/3).
  assert {
    condition = (
      [for rule in values(aws_vpc_security_group_ingress_rule.http) : [rule.ip_protocol, rule.from_port, rule.cidr_ipv4]] == [["tcp", 80, "0.0.0.0/0"]]
      && [for rule in values(aws_vpc_security_group_ingress_rule.https) : [rule.ip_protocol, rule.from_port, rule.cidr_ipv4]] == [["tcp", 443, "0.0.0.0/0"]]
      && [for rule in values(aws_vpc_security_group_ingress_rule.http3) : [rule.ip_protocol, rule.from_port, rule.cidr_ipv4]] == [["udp", 443, "0.0.0.0/0"]]
    )
    error_message = "A domain's site: 80/tcp, 443/tcp and 443/udp to allowed_cidrs."
  }

  assert {
    condition     = output.dashboard_url == "https://stocks.example.com/" && strcontains(local.user_data, "\n      SITE_ADDRESS=stocks.example.com\n")
    error_message = "HTTPS on the domain."
  }

  # The default stack fits the default instance: t3.medium, picked because it is enough (2368 +
  # 512 MiB: the API's limit holds 10,000 open streams, which a t3.small's 2 GiB does not).
  assert {
    condition     = aws_instance.this.instance_type == "t3.medium" && data.aws_ec2_instance_type.this.instance_type == "t3.medium"
    error_message = "The default stack runs on a t3.medium, whose memory is looked up."
  }

  # Exactly the commit; and the per-address limits at the edge, with their defaults.
  assert {
    condition     = strcontains(local.user_data, "\n      REPOSITORY_COMMIT=0123456789abcdef0123456789abcdef01234567\n")
    error_message = "The instance is told the commit to check out."
  }

  assert {
    condition = alltrue([
      for rule in [
        "limit rate over 10/second burst 40 packets",
        "ct count over 64",
        "th dport { 80, 443 } ct state new fib daddr type local",
      ] : strcontains(local.user_data, rule)
    ])
    error_message = "The edge firewall carries edge_connection_rate, edge_connection_burst and edge_connections_per_address."
  }

  assert {
    condition     = aws_instance.this.metadata_options[0].http_tokens == "required" && aws_instance.this.metadata_options[0].http_put_response_hop_limit == 1
    error_message = "IMDSv2 must be required, out of the containers' reach."
  }

  assert {
    condition     = aws_instance.this.root_block_device[0].encrypted && aws_ebs_volume.data.encrypted
    error_message = "Every volume must be encrypted."
  }

  assert {
    condition     = aws_eip_association.this.instance_id == aws_instance.this.id && aws_eip_association.this.allocation_id == aws_eip.this.id
    error_message = "The elastic IP must be on the instance."
  }

  assert {
    condition     = aws_volume_attachment.data.instance_id == aws_instance.this.id && aws_volume_attachment.data.volume_id == aws_ebs_volume.data.id
    error_message = "The data volume must be attached to the instance."
  }

  assert {
    condition     = aws_dlm_lifecycle_policy.data.policy_details[0].target_tags["Snapshots"] == aws_ebs_volume.data.tags["Snapshots"]
    error_message = "The snapshot policy must select the data volume."
  }

  assert {
    condition     = aws_dlm_lifecycle_policy.data.policy_details[0].schedule[0].retain_rule[0].count == 7
    error_message = "A week of daily snapshots by default."
  }

  # Session Manager and the API's token: no managed policy, no other parameter, no secret, no
  # database login.
  assert {
    condition = toset(flatten([for s in jsondecode(aws_iam_role_policy.instance.policy).Statement : s.Action])) == toset([
      "ssm:UpdateInstanceInformation",
      "ssmmessages:CreateControlChannel",
      "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel",
      "ssmmessages:OpenDataChannel",
      "ssm:GetParameter",
      "ssm:PutParameter",
    ])
    error_message = "Without a vendor key or RDS the instance may only run the Session Manager agent and keep the API's token."
  }

  # The API's write tokens: one parameter, made by the instance at its first start (never by
  # Terraform, so never in its state), read and written by this instance alone.
  assert {
    condition = (
      [for s in jsondecode(aws_iam_role_policy.instance.policy).Statement : [s.Action, s.Resource] if s.Sid == "ApiToken"] == [[
        ["ssm:GetParameter", "ssm:PutParameter"],
        ["arn:aws:ssm:us-east-1:111122223333:parameter/stockstreamer/api-token"],
      ]]
      && strcontains(local.user_data, "\n      API_TOKEN_PARAMETER=/stockstreamer/api-token\n")
      && output.api_token_command == "aws ssm get-parameter --region us-east-1 --name /stockstreamer/api-token --with-decryption --query Parameter.Value --output text"
    )
    error_message = "The instance keeps the API's token in its SSM parameter; api_token_command reads it."
  }

  # No alert channel chosen: nothing read for them (the alerts service has the browser alone).
  assert {
    condition     = !strcontains(local.user_data, "alert-channels.yaml /") && length([for s in jsondecode(aws_iam_role_policy.instance.policy).Statement : s if s.Sid == "AlertChannels"]) == 0
    error_message = "Without alert_channels_parameter no channel parameter is read or readable."
  }

  # What the instance is given: the script, compressed within EC2's 16 KiB.
  assert {
    condition     = aws_instance.this.user_data_base64 == base64gzip(local.user_data) && length(aws_instance.this.user_data_base64) <= 16384 && startswith(local.user_data, "#cloud-config\n")
    error_message = "The instance gets the rendered cloud-config, gzip-compressed, within EC2's user data limit."
  }

  # The simulator: no key to read, the fetcher's own calendar (24/7), regular hours.
  assert {
    condition     = strcontains(local.user_data, "\n      # secret file, SSM parameter\n\n") && strcontains(local.user_data, "\n      PROVIDER=simulated\n      HISTORY_PROVIDER=\n      CALENDAR=\n      EXTENDED_HOURS=false\n")
    error_message = "The default reads no vendor key and leaves the calendar to the fetcher."
  }

  assert {
    condition     = alltrue([for s in jsondecode(aws_iam_role_policy.instance.policy).Statement : s.Effect == "Allow" && !can(regex("\\*", join(",", s.Action)))])
    error_message = "No wildcard actions."
  }

  assert {
    condition     = strcontains(local.user_data, "stockstreamer-backup.timer") && !strcontains(local.user_data, "stockstreamer-db-tokens.timer")
    error_message = "The container database is dumped daily; no RDS tokens."
  }

  # observability is off by default: Caddy only, and no route to a Grafana that does not run.
  assert {
    condition     = strcontains(local.user_data, "\n      COMPOSE_PROFILES=proxy\n") && strcontains(local.user_data, "\n      GRAFANA_ROUTE=off\n") && strcontains(local.user_data, "\n      GRAFANA_ROOT_URL=\n")
    error_message = "By default the instance runs the proxy profile alone, with no Grafana route."
  }

  assert {
    condition     = output.grafana_url == null && output.grafana_tunnel_command == null
    error_message = "No Grafana outputs without observability."
  }

  # api_instances = 1 (the default): the single instance as it always was, and nothing of the
  # scale-out mode.
  assert {
    condition = (
      length(aws_lb.web) + length(aws_autoscaling_group.web) + length(aws_launch_template.web)
      + length(aws_lb_target_group.api) + length(aws_lb_target_group.dashboard) + length(aws_lb_listener.https)
      + length(aws_lb_listener.http) + length(aws_acm_certificate.web) + length(aws_security_group.alb)
      + length(aws_security_group.web) + length(aws_iam_role.web) + length(aws_vpc_security_group_ingress_rule.web_from_alb)
    ) == 0
    error_message = "api_instances = 1 creates no load balancer, no Auto Scaling group and nothing else of the scale-out mode."
  }

  assert {
    condition     = output.load_balancer_dns_name == null && output.acm_validation_records == null && output.api_autoscaling_group == null
    error_message = "No scale-out outputs with api_instances = 1."
  }

  assert {
    condition = alltrue([
      for line in [
        "ExecStart=/usr/bin/docker compose up -d --build --remove-orphans --wait",
        "for service in fetcher api alerts; do",
        "COMPOSE_PROFILES=proxy",
        "RequiresMountsFor=/var/lib/stockstreamer",
      ] : strcontains(local.user_data, "\n      ${line}\n")
    ]) && !strcontains(local.user_data, "compose.web.yaml")
    error_message = "api_instances = 1: the instance runs every service behind Caddy, the fetcher's, the API's and the alerts service's tokens renewed."
  }
}

run "observability_on_the_https_site" {
  command = apply

  variables {
    observability = true
    domain_name   = "stocks.example.com"
  }

  override_data {
    target = data.aws_ec2_instance_type.this
    values = { memory_size = 4096 }
  }

  # The observability profile's limits fit beside the default stack on its t3.medium.
  assert {
    condition     = aws_instance.this.instance_type == "t3.medium" && data.aws_ec2_instance_type.this.instance_type == "t3.medium"
    error_message = "observability keeps the default instance, a t3.medium."
  }

  assert {
    condition     = strcontains(local.user_data, "\n      COMPOSE_PROFILES=proxy,observability\n")
    error_message = "observability adds the compose profile to the proxy."
  }

  assert {
    condition     = strcontains(local.user_data, "\n      GRAFANA_ROUTE=on\n") && strcontains(local.user_data, "\n      GRAFANA_ROOT_URL=https://stocks.example.com/grafana/\n")
    error_message = "On the HTTPS site Caddy serves Grafana under /grafana/, which knows its public URL."
  }

  assert {
    condition     = output.grafana_url == "https://stocks.example.com/grafana/"
    error_message = "Grafana's URL is on the HTTPS site."
  }

  # Grafana goes through Caddy: the security group opens nothing new.
  assert {
    condition = alltrue([
      for rule in concat(
        values(aws_vpc_security_group_ingress_rule.http),
        values(aws_vpc_security_group_ingress_rule.https),
        values(aws_vpc_security_group_ingress_rule.http3),
        values(aws_vpc_security_group_ingress_rule.ssh),
      ) : rule.from_port == rule.to_port && contains([80, 443], rule.from_port)
    ])
    error_message = "observability opens no port but 80/443 (no 3000, no 9090)."
  }

  # The admin password is made on the instance: no trace of it in user data (nor in the state).
  assert {
    condition     = !strcontains(local.user_data, "GF_SECURITY_ADMIN_PASSWORD") && !can(regex("(?i)grafana[^\n]*password=", local.user_data))
    error_message = "Grafana's admin password never goes through Terraform."
  }
}

run "observability_without_a_domain_stays_on_loopback" {
  command = apply

  variables {
    observability    = true
    domain_name      = ""
    allow_plain_http = true
  }

  override_data {
    target = data.aws_ec2_instance_type.this
    values = { memory_size = 4096 }
  }

  assert {
    condition     = strcontains(local.user_data, "\n      COMPOSE_PROFILES=proxy,observability\n")
    error_message = "observability runs the profile with or without a domain."
  }

  assert {
    condition     = strcontains(local.user_data, "\n      GRAFANA_ROUTE=off\n") && strcontains(local.user_data, "\n      GRAFANA_ROOT_URL=\n")
    error_message = "Plain HTTP: no public Grafana route (its login would cross the internet in clear text)."
  }

  assert {
    condition     = output.grafana_url == "http://localhost:3000/" && strcontains(output.grafana_tunnel_command, "--document-name AWS-StartPortForwardingSession") && strcontains(output.grafana_tunnel_command, "--target ${aws_instance.this.id}")
    error_message = "Without a domain Grafana is reached through an SSM port forwarding session."
  }
}

run "observability_with_rds_is_refused" {
  command = plan

  variables {
    use_rds       = true
    observability = true
  }

  # Memory enough: only the combination is refused.
  override_data {
    target = data.aws_ec2_instance_type.this
    values = { memory_size = 4096 }
  }

  expect_failures = [aws_instance.this]
}

run "with_rds_a_vendor_key_as_before_chains_and_ssh" {
  command = apply

  variables {
    use_rds                    = true
    market_data_provider       = "finnhub"
    provider_api_key_parameter = "/stockstreamer/finnhub-api-key"
    ssh_cidrs                  = ["203.0.113.0/24"]
    domain_name                = "stocks.example.com"
  }

  assert {
    condition     = [for rule in values(aws_vpc_security_group_ingress_rule.ssh) : rule.cidr_ipv4] == ["203.0.113.0/24"] && alltrue([for rule in values(aws_vpc_security_group_ingress_rule.ssh) : rule.from_port == 22 && rule.to_port == 22])
    error_message = "SSH only from ssh_cidrs."
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.rds_from_instance[0].referenced_security_group_id == aws_security_group.instance.id && aws_vpc_security_group_ingress_rule.rds_from_instance[0].cidr_ipv4 == null
    error_message = "PostgreSQL only from the instance's security group."
  }

  assert {
    condition     = aws_db_instance.this[0].storage_encrypted && !aws_db_instance.this[0].publicly_accessible && aws_db_instance.this[0].iam_database_authentication_enabled
    error_message = "RDS: encrypted, private, IAM authentication on."
  }

  assert {
    condition = {
      for s in jsondecode(aws_iam_role_policy.instance.policy).Statement : s.Sid => s.Resource
      if contains(["VendorKeys", "DatabaseMasterSecret", "DatabaseLogins"], s.Sid)
      } == {
      VendorKeys           = ["arn:aws:ssm:us-east-1:111122223333:parameter/stockstreamer/finnhub-api-key"]
      DatabaseMasterSecret = "arn:aws:secretsmanager:us-east-1:111122223333:secret:rds!db-1"
      DatabaseLogins = [
        "arn:aws:rds-db:us-east-1:111122223333:dbuser:db-ABCDEFGHIJKLMNOP/stockstreamer_fetcher",
        "arn:aws:rds-db:us-east-1:111122223333:dbuser:db-ABCDEFGHIJKLMNOP/stockstreamer_api",
        "arn:aws:rds-db:us-east-1:111122223333:dbuser:db-ABCDEFGHIJKLMNOP/stockstreamer_alerts",
      ]
    }
    error_message = "Exactly the one parameter, the master secret and the three database logins."
  }

  assert {
    condition     = [for s in jsondecode(aws_iam_role_policy.instance.policy).Statement : s.Action if s.Sid == "VendorKeys"] == [["ssm:GetParameter"]]
    error_message = "The vendor key: ssm:GetParameter only."
  }

  # provider_api_key_parameter, from before chains, still names a single vendor's key.
  assert {
    condition     = strcontains(local.user_data, "\n      finnhub-api-key /stockstreamer/finnhub-api-key\n") && strcontains(local.user_data, "\n      PROVIDER=finnhub\n")
    error_message = "The one key is read into the fetcher's finnhub key file."
  }

  assert {
    condition     = strcontains(local.user_data, "stockstreamer-db-tokens.timer") && !strcontains(local.user_data, "stockstreamer-backup.timer")
    error_message = "RDS: IAM tokens renewed by a timer; RDS keeps its own backups."
  }

  assert {
    condition     = output.dashboard_url == "https://stocks.example.com/"
    error_message = "HTTPS when domain_name is set."
  }
}

run "a_vendor_chain_reads_each_vendors_keys_and_no_other" {
  command = apply

  variables {
    market_data_provider            = "alpaca, finnhub"
    history_provider                = "alpaca"
    calendar                        = "XNAS"
    extended_hours                  = true
    alpaca_api_key_id_parameter     = "/stockstreamer/alpaca-api-key-id"
    alpaca_api_secret_key_parameter = "/stockstreamer/alpaca-api-secret-key"
    finnhub_api_key_parameter       = "/stockstreamer/finnhub-api-key"
    # Given, but no vendor in use needs it: neither read nor readable.
    twelvedata_api_key_parameter = "/stockstreamer/twelvedata-api-key"
  }

  assert {
    condition = [for s in jsondecode(aws_iam_role_policy.instance.policy).Statement : s.Resource if s.Sid == "VendorKeys"] == [[
      "arn:aws:ssm:us-east-1:111122223333:parameter/stockstreamer/alpaca-api-key-id",
      "arn:aws:ssm:us-east-1:111122223333:parameter/stockstreamer/alpaca-api-secret-key",
      "arn:aws:ssm:us-east-1:111122223333:parameter/stockstreamer/finnhub-api-key",
    ]]
    error_message = "The instance may read exactly the chain's vendors' key parameters."
  }

  assert {
    condition = alltrue([
      for line in [
        "alpaca-api-key-id /stockstreamer/alpaca-api-key-id",
        "alpaca-api-secret-key /stockstreamer/alpaca-api-secret-key",
        "finnhub-api-key /stockstreamer/finnhub-api-key",
        "PROVIDER=alpaca,finnhub",
        "HISTORY_PROVIDER=alpaca",
        "CALENDAR=XNAS",
        "EXTENDED_HOURS=true",
      ] : strcontains(local.user_data, "\n      ${line}\n")
    ]) && !strcontains(local.user_data, "twelvedata-api-key /")
    error_message = "The boot script reads each key into its file and passes the chain, history provider, calendar and extended hours on."
  }
}

run "alert_channels_are_read_from_their_parameter" {
  command = apply

  variables {
    alert_channels_parameter = "/stockstreamer/alert-channels"
  }

  assert {
    condition = (
      [for s in jsondecode(aws_iam_role_policy.instance.policy).Statement : [s.Action, s.Resource] if s.Sid == "AlertChannels"] == [[
        ["ssm:GetParameter"],
        ["arn:aws:ssm:us-east-1:111122223333:parameter/stockstreamer/alert-channels"],
      ]]
      && strcontains(local.user_data, "\n      alert-channels.yaml /stockstreamer/alert-channels\n")
      && !strcontains(local.user_data, "ntfy")
    )
    error_message = "The channels' parameter is read into the alerts service's secret file at every start; no URL is in the user data."
  }
}

run "a_history_provider_outside_the_chain_needs_its_keys" {
  command = plan

  variables {
    market_data_provider      = "finnhub"
    history_provider          = "alpaca"
    finnhub_api_key_parameter = "/stockstreamer/finnhub-api-key"
  }

  expect_failures = [aws_instance.this]
}

run "alpaca_needs_both_of_its_keys" {
  command = plan

  variables {
    market_data_provider        = "alpaca"
    alpaca_api_key_id_parameter = "/stockstreamer/alpaca-api-key-id"
  }

  expect_failures = [aws_instance.this]
}

run "the_old_key_parameter_does_not_stand_in_for_a_chain" {
  command = plan

  variables {
    market_data_provider       = "finnhub,twelvedata"
    provider_api_key_parameter = "/stockstreamer/finnhub-api-key"
  }

  expect_failures = [aws_instance.this]
}

run "an_unknown_provider_in_the_chain_is_refused" {
  command = plan

  variables {
    market_data_provider = "alpaca,polygon"
  }

  expect_failures = [var.market_data_provider]
}

run "finnhub_has_no_history" {
  command = plan

  variables {
    history_provider = "finnhub"
  }

  expect_failures = [var.history_provider]
}

run "the_chain_is_not_a_free_setting" {
  command = plan

  variables {
    settings = { STOCKSTREAMER_PROVIDER = "alpaca" }
  }

  expect_failures = [var.settings]
}

run "ssh_from_the_internet_is_refused" {
  command = plan

  variables {
    ssh_cidrs = ["0.0.0.0/0"]
  }

  expect_failures = [var.ssh_cidrs]
}

run "a_moving_branch_is_refused" {
  command = plan

  variables {
    repository_ref = "main"
  }

  expect_failures = [var.repository_ref]
}

run "a_tag_is_refused" {
  command = plan

  variables {
    repository_ref = "v1.2.3"
  }

  expect_failures = [var.repository_ref]
}

run "an_abbreviated_commit_is_refused" {
  command = plan

  variables {
    repository_ref = "0123456789ab"
  }

  expect_failures = [var.repository_ref]
}

run "plain_http_is_refused_by_default" {
  command = plan

  variables {
    domain_name = ""
  }

  expect_failures = [aws_instance.this]
}

run "plain_http_when_allowed_opens_port_80_alone" {
  command = apply

  variables {
    domain_name      = ""
    allow_plain_http = true
  }

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.https) == 0 && length(aws_vpc_security_group_ingress_rule.http3) == 0
    error_message = "Without a domain Caddy serves no HTTPS: 443 stays closed, TCP and UDP."
  }

  assert {
    condition     = [for rule in values(aws_vpc_security_group_ingress_rule.http) : [rule.ip_protocol, rule.from_port, rule.to_port]] == [["tcp", 80, 80]]
    error_message = "Port 80 alone is open."
  }

  assert {
    condition     = startswith(output.dashboard_url, "http://") && strcontains(local.user_data, "\n      SITE_ADDRESS=:80\n")
    error_message = "Plain HTTP by IP."
  }
}

run "observability_on_a_named_small_instance_is_refused" {
  command = plan

  variables {
    observability = true
    instance_type = "t3.small"
  }

  override_data {
    target = data.aws_ec2_instance_type.this
    values = { memory_size = 2048 }
  }

  expect_failures = [aws_instance.this]
}

run "an_instance_smaller_than_the_default_stack_is_refused" {
  command = plan

  variables {
    instance_type = "t3.micro"
  }

  override_data {
    target = data.aws_ec2_instance_type.this
    values = { memory_size = 1024 }
  }

  expect_failures = [aws_instance.this]
}

run "a_named_instance_that_fits_is_used" {
  command = plan

  variables {
    observability = true
    instance_type = "t4g.medium"
  }

  override_data {
    target = data.aws_ec2_instance_type.this
    values = { memory_size = 4096 }
  }

  assert {
    condition     = aws_instance.this.instance_type == "t4g.medium" && strcontains(data.aws_ssm_parameter.ami.name, "/arm64/")
    error_message = "A named type that holds the limits is used as named (Graviton: the arm64 image)."
  }
}

run "api_replicas_count_against_the_memory" {
  command = plan

  variables {
    observability = true
    settings      = { STOCKSTREAMER_API_REPLICAS = "2" }
  }

  override_data {
    target = data.aws_ec2_instance_type.this
    values = { memory_size = 8192 }
  }

  # 2368 + 960 + 1024 + 512 MiB: more than a t3.medium has.
  assert {
    condition     = aws_instance.this.instance_type == "t3.large"
    error_message = "One more API replica beside observability moves the instance to a t3.large."
  }
}

run "more_than_two_api_replicas_need_rds" {
  command = plan

  variables {
    settings = { STOCKSTREAMER_API_REPLICAS = "3" }
  }

  override_data {
    target = data.aws_ec2_instance_type.this
    values = { memory_size = 4096 }
  }

  expect_failures = [aws_instance.this]
}

run "api_replicas_that_are_not_a_number_are_refused" {
  command = plan

  variables {
    settings = { STOCKSTREAMER_API_REPLICAS = "three" }
  }

  expect_failures = [var.settings]
}

# api_instances > 1: a load balancer in front of an Auto Scaling group of API instances; the
# instance keeps what must run once.
run "scale_out_behind_a_load_balancer" {
  command = apply

  variables {
    api_instances             = 3
    use_rds                   = true
    market_data_provider      = "finnhub"
    finnhub_api_key_parameter = "/stockstreamer/finnhub-api-key"
    ssh_cidrs                 = ["203.0.113.0/24"]
  }

  # The load balancer: public, in two of the default VPC's subnets (the instance's first), HTTPS
  # with the ACM certificate.
  assert {
    condition = (
      !aws_lb.web[0].internal && aws_lb.web[0].load_balancer_type == "application"
      && toset(aws_lb.web[0].subnets) == toset(["subnet-0a", "subnet-0b"])
      && toset(aws_lb.web[0].security_groups) == toset([aws_security_group.alb[0].id])
      && aws_instance.this.subnet_id == "subnet-0a"
    )
    error_message = "An internet-facing Application Load Balancer in two availability zones (the instance's among them), behind its own security group."
  }

  assert {
    condition     = aws_lb.web[0].idle_timeout == 3600 && aws_lb.web[0].drop_invalid_header_fields && aws_lb.web[0].enable_deletion_protection
    error_message = "An hour's idle timeout (WebSockets of a quiet market), invalid headers dropped, deletion protected by default."
  }

  assert {
    condition = (
      aws_acm_certificate.web[0].domain_name == "stocks.example.com" && aws_acm_certificate.web[0].validation_method == "DNS"
      && aws_lb_listener.https[0].port == 443 && aws_lb_listener.https[0].protocol == "HTTPS"
      && aws_lb_listener.https[0].certificate_arn == aws_acm_certificate_validation.web[0].certificate_arn
      && aws_acm_certificate_validation.web[0].certificate_arn == aws_acm_certificate.web[0].arn
      && startswith(aws_lb_listener.https[0].ssl_policy, "ELBSecurityPolicy-TLS13-1-2-")
    )
    error_message = "HTTPS on 443 with the validated ACM certificate for domain_name and a TLS 1.3/1.2 policy."
  }

  assert {
    condition = (
      aws_lb_listener.http[0].port == 80 && aws_lb_listener.http[0].default_action[0].type == "redirect"
      && aws_lb_listener.http[0].default_action[0].redirect[0].protocol == "HTTPS"
      && aws_lb_listener.http[0].default_action[0].redirect[0].port == "443"
    )
    error_message = "Port 80 redirects to HTTPS."
  }

  assert {
    condition = (
      aws_lb_listener.https[0].routing_http_response_strict_transport_security_header_value == "max-age=31536000; includeSubDomains"
      && aws_lb_listener.https[0].routing_http_response_x_content_type_options_header_value == "nosniff"
      && aws_lb_listener.https[0].routing_http_response_x_frame_options_header_value == "DENY"
      && strcontains(aws_lb_listener.https[0].routing_http_response_content_security_policy_header_value, "frame-ancestors 'none'")
    )
    error_message = "The load balancer adds Caddy's security headers."
  }

  # Routing: the API's paths, the private ones refused, the rest the dashboard's.
  assert {
    condition = (
      aws_lb_listener.https[0].default_action[0].target_group_arn == aws_lb_target_group.dashboard[0].arn
      && aws_lb_listener_rule.api[0].action[0].target_group_arn == aws_lb_target_group.api[0].arn
      && toset(one(aws_lb_listener_rule.api[0].condition).path_pattern[0].values) == toset(["/api/*", "/openapi.json"])
      && aws_lb_listener_rule.private[0].action[0].fixed_response[0].status_code == "404"
      && toset(one(aws_lb_listener_rule.private[0].condition).path_pattern[0].values) == toset(["/metrics*", "/docs*", "/redoc*"])
      && aws_lb_listener_rule.private[0].priority < aws_lb_listener_rule.api[0].priority
    )
    error_message = "/api/* and /openapi.json to the API, /metrics and the docs refused, everything else to the dashboard."
  }

  # The target groups: health on /readyz (the API) and /healthz (the dashboard), the dashboard sticky.
  assert {
    condition = (
      aws_lb_target_group.api[0].port == 8000 && aws_lb_target_group.api[0].protocol == "HTTP"
      && aws_lb_target_group.api[0].health_check[0].path == "/readyz" && aws_lb_target_group.api[0].health_check[0].matcher == "200"
      && aws_lb_target_group.api[0].load_balancing_algorithm_type == "least_outstanding_requests"
    )
    error_message = "The API's target group: its port, health checked on /readyz, streams balanced by count."
  }

  assert {
    condition = (
      aws_lb_target_group.dashboard[0].port == 5006 && aws_lb_target_group.dashboard[0].health_check[0].path == "/healthz"
      && aws_lb_target_group.dashboard[0].stickiness[0].enabled && aws_lb_target_group.dashboard[0].stickiness[0].type == "lb_cookie"
      && length([for group in [aws_lb_target_group.api[0], aws_lb_target_group.dashboard[0]] : group if group.deregistration_delay == "30"]) == 2
    )
    error_message = "The dashboard's target group: sticky (a Bokeh page and its WebSocket on one instance), health on /healthz; both release leaving instances after 30 s."
  }

  # The group: N instances from the launch template, in both target groups, replaced on failed
  # load balancer health checks, a replacement healthy before the instance it replaces goes.
  assert {
    condition = (
      aws_autoscaling_group.web[0].desired_capacity == 3 && aws_autoscaling_group.web[0].min_size == 3
      && aws_autoscaling_group.web[0].max_size == 6
      && aws_autoscaling_group.web[0].health_check_type == "ELB" && aws_autoscaling_group.web[0].health_check_grace_period >= 600
      && toset(aws_autoscaling_group.web[0].target_group_arns) == toset([aws_lb_target_group.api[0].arn, aws_lb_target_group.dashboard[0].arn])
      && toset(aws_autoscaling_group.web[0].vpc_zone_identifier) == toset(["subnet-0a", "subnet-0b"])
      && aws_autoscaling_group.web[0].launch_template[0].id == aws_launch_template.web[0].id
      && aws_autoscaling_group.web[0].instance_maintenance_policy[0].min_healthy_percentage == 100
      && aws_autoscaling_group.web[0].instance_maintenance_policy[0].max_healthy_percentage == 200
    )
    error_message = "api_instances API instances in both target groups, ELB health checks with a grace period, launched before what they replace."
  }

  assert {
    condition = (
      aws_launch_template.web[0].metadata_options[0].http_tokens == "required" && aws_launch_template.web[0].metadata_options[0].http_put_response_hop_limit == 1
      && aws_launch_template.web[0].block_device_mappings[0].ebs[0].encrypted == "true"
      && aws_launch_template.web[0].image_id == "ami-0fedcba9876543210" && aws_launch_template.web[0].instance_type == "t3.small"
      && aws_launch_template.web[0].iam_instance_profile[0].name == aws_iam_instance_profile.web[0].name
      && toset(aws_launch_template.web[0].network_interfaces[0].security_groups) == toset([aws_security_group.web[0].id])
    )
    error_message = "The API instances: IMDSv2 out of the containers' reach, an encrypted root volume, the image lookup, their own profile and security group."
  }

  assert {
    condition     = aws_launch_template.web[0].user_data == base64gzip(local.web_user_data) && length(aws_launch_template.web[0].user_data) <= 16384 && startswith(local.web_user_data, "#cloud-config\n")
    error_message = "The API instances get their cloud-config, gzip-compressed, within EC2's user data limit."
  }

  # Who reaches whom: the internet the load balancer; the load balancer alone the API instances'
  # two ports; the instances alone RDS; the singleton serves nothing.
  assert {
    condition = (
      [for rule in values(aws_vpc_security_group_ingress_rule.alb_http) : [rule.ip_protocol, rule.from_port, rule.cidr_ipv4]] == [["tcp", 80, "0.0.0.0/0"]]
      && [for rule in values(aws_vpc_security_group_ingress_rule.alb_https) : [rule.ip_protocol, rule.from_port, rule.cidr_ipv4]] == [["tcp", 443, "0.0.0.0/0"]]
    )
    error_message = "The load balancer takes 80 and 443 from allowed_cidrs."
  }

  assert {
    condition = (
      toset([for rule in values(aws_vpc_security_group_ingress_rule.web_from_alb) : rule.from_port]) == toset([8000, 5006])
      && alltrue([for rule in values(aws_vpc_security_group_ingress_rule.web_from_alb) : rule.referenced_security_group_id == aws_security_group.alb[0].id && rule.cidr_ipv4 == null && rule.from_port == rule.to_port])
      && alltrue([for rule in values(aws_vpc_security_group_egress_rule.alb_to_web) : rule.referenced_security_group_id == aws_security_group.web[0].id])
      && [for rule in values(aws_vpc_security_group_ingress_rule.web_ssh) : rule.cidr_ipv4] == ["203.0.113.0/24"]
    )
    error_message = "The API instances' ports from the load balancer's security group alone (and SSH from ssh_cidrs); the load balancer sends only there."
  }

  assert {
    condition = (
      length(aws_vpc_security_group_ingress_rule.http) + length(aws_vpc_security_group_ingress_rule.https) + length(aws_vpc_security_group_ingress_rule.http3) == 0
    )
    error_message = "The singleton opens no web port: the load balancer serves the site."
  }

  assert {
    condition = (
      aws_vpc_security_group_ingress_rule.rds_from_instance[0].referenced_security_group_id == aws_security_group.instance.id
      && aws_vpc_security_group_ingress_rule.rds_from_web[0].referenced_security_group_id == aws_security_group.web[0].id
      && aws_vpc_security_group_ingress_rule.rds_from_web[0].from_port == 5432 && aws_vpc_security_group_ingress_rule.rds_from_web[0].cidr_ipv4 == null
      && aws_vpc_security_group_egress_rule.web_postgres[0].referenced_security_group_id == aws_security_group.rds[0].id
    )
    error_message = "PostgreSQL from the singleton's and the API instances' security groups only."
  }

  # Each role's permissions: the API instances their login alone; the singleton the fetcher's.
  assert {
    condition = (
      toset(flatten([for s in jsondecode(aws_iam_role_policy.web[0].policy).Statement : s.Action])) == toset([
        "ssm:UpdateInstanceInformation",
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
        "ssm:GetParameter",
        "rds-db:connect",
      ])
      && [for s in jsondecode(aws_iam_role_policy.web[0].policy).Statement : s.Resource if s.Sid == "DatabaseLogins"] == [["arn:aws:rds-db:us-east-1:111122223333:dbuser:db-ABCDEFGHIJKLMNOP/stockstreamer_api"]]
      && [for s in jsondecode(aws_iam_role_policy.web[0].policy).Statement : [s.Action, s.Resource] if s.Sid == "ApiToken"] == [[["ssm:GetParameter"], ["arn:aws:ssm:us-east-1:111122223333:parameter/stockstreamer/api-token"]]]
    )
    error_message = "An API instance may run the Session Manager agent, read the API's tokens (the singleton makes them) and log in as the API: no key, no master secret."
  }

  assert {
    condition = [for s in jsondecode(aws_iam_role_policy.instance.policy).Statement : s.Resource if s.Sid == "DatabaseLogins"] == [[
      "arn:aws:rds-db:us-east-1:111122223333:dbuser:db-ABCDEFGHIJKLMNOP/stockstreamer_fetcher",
      "arn:aws:rds-db:us-east-1:111122223333:dbuser:db-ABCDEFGHIJKLMNOP/stockstreamer_alerts",
    ]]
    error_message = "The singleton logs in as the fetcher and the alerts service only (and keeps the master secret for the migrations)."
  }

  # What each runs.
  assert {
    condition = alltrue([
      for line in [
        "ExecStart=/usr/bin/docker compose up -d --build --remove-orphans --wait fetcher alerts",
        "ExecReload=/usr/bin/docker compose up -d --build --remove-orphans --wait fetcher alerts",
        "for service in fetcher alerts; do",
        "COMPOSE_PROFILES=",
        "finnhub-api-key /stockstreamer/finnhub-api-key",
        "API_TOKEN_PARAMETER=/stockstreamer/api-token",
      ] : strcontains(local.user_data, "\n      ${line}\n")
    ])
    error_message = "The singleton runs the fetcher and the alerts service (and the one-shots before them), no proxy, reads the vendor's key and makes the API's token."
  }

  assert {
    condition = alltrue([
      for line in [
        "ExecStart=/usr/bin/docker compose up -d --build --remove-orphans --wait api dashboard",
        "compose_file=docker-compose.yml:deploy/compose.rds.yaml:deploy/compose.web.yaml",
        "for service in api; do",
        "LOAD_BALANCER_NETWORKS=172.31.0.0/20,172.31.16.0/20",
        "# secret file, SSM parameter",
        "API_TOKEN_PARAMETER=/stockstreamer/api-token",
      ] : strcontains(local.web_user_data, "\n      ${line}\n")
    ])
    error_message = "An API instance runs the API and the dashboard, trusts the load balancer's subnets, renews the API's token."
  }

  assert {
    condition = (
      !strcontains(local.web_user_data, "secretsmanager") && !strcontains(local.web_user_data, "finnhub-api-key /")
      && !strcontains(local.web_user_data, "put-parameter")
      && !strcontains(local.web_user_data, "fs_setup") && !strcontains(local.web_user_data, "edge-firewall")
    )
    error_message = "An API instance reads no secret and no key (and never makes the API's token), has no data volume and no per-address firewall (the load balancer's addresses would trip it)."
  }

  assert {
    condition = (
      output.load_balancer_dns_name == aws_lb.web[0].dns_name && output.dashboard_url == "https://stocks.example.com/"
      && output.acm_validation_records == [{ name = "_0123456789abcdef.stocks.example.com.", type = "CNAME", value = "_fedcba9876543210.acm-validations.aws." }]
      && output.api_autoscaling_group == aws_autoscaling_group.web[0].name
    )
    error_message = "The outputs name the load balancer to point domain_name at, and the records that validate its certificate."
  }
}

run "scale_out_needs_rds" {
  command = plan

  variables {
    api_instances = 2
  }

  expect_failures = [aws_instance.this]
}

run "scale_out_needs_a_domain" {
  command = plan

  variables {
    api_instances    = 2
    use_rds          = true
    domain_name      = ""
    allow_plain_http = true
  }

  expect_failures = [aws_instance.this]
}

run "scale_out_in_a_named_subnet_needs_the_load_balancers_subnets" {
  command = plan

  variables {
    api_instances = 2
    use_rds       = true
    subnet_id     = "subnet-0a"
  }

  expect_failures = [aws_instance.this]
}

run "scale_out_names_no_api_replicas" {
  command = plan

  variables {
    api_instances = 2
    use_rds       = true
    settings      = { STOCKSTREAMER_API_REPLICAS = "2" }
  }

  # Memory enough for the replicas: only the combination is refused.
  override_data {
    target = data.aws_ec2_instance_type.this
    values = { memory_size = 4096 }
  }

  expect_failures = [aws_instance.this]
}

run "an_api_instance_smaller_than_its_containers_is_refused" {
  command = plan

  variables {
    api_instances     = 2
    use_rds           = true
    api_instance_type = "t3.nano"
  }

  override_data {
    target = data.aws_ec2_instance_type.web
    values = { memory_size = 512 }
  }

  expect_failures = [aws_launch_template.web]
}

run "api_instances_must_be_a_whole_number_from_one" {
  command = plan

  variables {
    api_instances = 0
  }

  expect_failures = [var.api_instances]
}
