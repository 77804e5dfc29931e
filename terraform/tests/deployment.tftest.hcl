# `terraform test`: plans and applies against a mocked AWS provider (no network, no credentials)
# and checks what the deployment promises: exposure, IMDSv2, encryption, the elastic IP, an
# instance policy that reaches only what the stack needs, HTTPS unless plain HTTP is asked for,
# a deployed commit, and an instance whose memory holds the containers' limits.

mock_provider "aws" {
  # Values the provider itself validates, where the mock's random strings would not pass.
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::111122223333:role/mock" }
  }

  override_data {
    target = data.aws_ssm_parameter.ami
    values = { insecure_value = "ami-0123456789abcdef0" }
  }
  override_data {
    target = data.aws_subnets.default
    values = { ids = ["subnet-0a", "subnet-0b"] }
  }
  override_data {
    target = data.aws_subnet.instance
    values = { vpc_id = "vpc-0123", availability_zone = "us-east-1a" }
  }
  override_data {
    target = data.aws_subnets.vpc
    values = { ids = ["subnet-0a", "subnet-0b"] }
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

  # Session Manager only: no managed policy, no parameter, no secret, no database login.
  assert {
    condition = toset(flatten([for s in jsondecode(aws_iam_role_policy.instance.policy).Statement : s.Action])) == toset([
      "ssm:UpdateInstanceInformation",
      "ssmmessages:CreateControlChannel",
      "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel",
      "ssmmessages:OpenDataChannel",
    ])
    error_message = "Without a vendor key or RDS the instance may only run the Session Manager agent."
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
      ]
    }
    error_message = "Exactly the one parameter, the master secret and the two database logins."
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
