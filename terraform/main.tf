provider "aws" {
  region = var.aws_region

  default_tags {
    tags = merge({ Project = "stockstreamer", ManagedBy = "terraform" }, var.tags)
  }
}

################################################################################
# Lookups
################################################################################

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  # Graviton families (t4g, m7g, c8g, ...) carry a "g" right after the generation digit.
  arch = can(regex("^[a-z]+[0-9]+g", local.instance_type)) ? "arm64" : "amd64"

  public_host   = var.domain_name != "" ? var.domain_name : aws_eip.this.public_ip
  public_origin = var.domain_name != "" ? "https://${var.domain_name}" : "http://${aws_eip.this.public_ip}"

  # 443 (TCP, and UDP for HTTP/3) only where Caddy serves HTTPS: on a domain's site.
  https_cidrs = var.domain_name != "" ? toset(var.allowed_cidrs) : toset([])

  # Grafana gets a public route only on the HTTPS site: its login must never cross the internet in
  # clear text. Without a domain it stays on the instance's loopback, reached through SSM.
  compose_profiles = var.observability ? "proxy,observability" : "proxy"
  grafana_public   = var.observability && var.domain_name != ""
}

################################################################################
# Market data: the provider chain and the vendors' keys
################################################################################

locals {
  providers = [for name in split(",", var.market_data_provider) : trimspace(name)]
  # The vendors whose keys the fetcher needs: the chain's, and the history provider's.
  vendors = sort(setsubtract(concat(local.providers, var.history_provider == "" ? [] : [var.history_provider]), ["simulated"]))

  # Each vendor's key files, as services/secrets/layout.py names them (a test holds them equal).
  vendor_key_files = {
    finnhub    = ["finnhub-api-key"]
    twelvedata = ["twelvedata-api-key"]
    alpaca     = ["alpaca-api-key-id", "alpaca-api-secret-key"]
  }
  # The parameter given for each file (the variable is the file's name + _parameter); the old
  # provider_api_key_parameter stands in for the one key of a single finnhub or twelvedata.
  legacy_key_file = length(local.providers) == 1 && contains(["finnhub", "twelvedata"], local.providers[0]) ? "${local.providers[0]}-api-key" : ""
  key_parameter_given = {
    for file, name in {
      "finnhub-api-key"       = var.finnhub_api_key_parameter
      "twelvedata-api-key"    = var.twelvedata_api_key_parameter
      "alpaca-api-key-id"     = var.alpaca_api_key_id_parameter
      "alpaca-api-secret-key" = var.alpaca_api_secret_key_parameter
    } : file => name != "" || file != local.legacy_key_file ? name : var.provider_api_key_parameter
  }
  # Secret file => SSM parameter, for the vendors in use only: the instance reads no other key.
  key_parameters = {
    for file in flatten([for vendor in local.vendors : local.vendor_key_files[vendor]]) :
    file => local.key_parameter_given[file] if local.key_parameter_given[file] != ""
  }
  missing_key_parameters = [
    for file in flatten([for vendor in local.vendors : local.vendor_key_files[vendor]]) :
    "${replace(file, "-", "_")}_parameter" if local.key_parameter_given[file] == ""
  ]
  key_parameter_arns = [
    for file in sort(keys(local.key_parameters)) :
    "arn:${data.aws_partition.current.partition}:ssm:${var.aws_region}:${data.aws_caller_identity.current.account_id}:parameter/${trimprefix(local.key_parameters[file], "/")}"
  ]
}

# Ubuntu 24.04 LTS, looked up at plan time from Canonical's public SSM parameter (not hard-coded).
data "aws_ssm_parameter" "ami" {
  name = "/aws/service/canonical/ubuntu/server/24.04/stable/current/${local.arch}/hvm/ebs-gp3/ami-id"
}

data "aws_vpc" "default" {
  count   = var.subnet_id == null ? 1 : 0
  default = true
}

data "aws_subnets" "default" {
  count = var.subnet_id == null ? 1 : 0

  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.default[0].id]
  }

  filter {
    name   = "default-for-az"
    values = ["true"]
  }
}

data "aws_subnet" "instance" {
  id = var.subnet_id != null ? var.subnet_id : sort(data.aws_subnets.default[0].ids)[0]
}

################################################################################
# Memory: the containers' limits must fit the instance
################################################################################

locals {
  # The containers' memory limits in MiB, mirroring docker-compose.yml and deploy/compose*.yaml
  # (a test holds them to compose's own numbers): the default stack with the proxy profile, the
  # one-shots included; what the observability profile adds; each API replica past the first.
  compose_memory_mib = {
    default_stack     = 2368
    observability     = 960
    extra_api_replica = 1024
  }
  # The system beside the containers: the kernel, dockerd, containerd, the SSM agent, and the
  # image builds of `docker compose up --build`.
  host_reserve_mib = 512

  api_replicas = tonumber(lookup(var.settings, "STOCKSTREAMER_API_REPLICAS", "1"))
  memory_needed_mib = (
    local.compose_memory_mib.default_stack
    + (var.observability ? local.compose_memory_mib.observability : 0)
    + (local.api_replicas - 1) * local.compose_memory_mib.extra_api_replica
    + local.host_reserve_mib
  )

  # instance_type = null: the smallest general-purpose t3 that holds memory_needed_mib (their
  # memory is fixed by the type; the data source below checks whichever type is used).
  t3_memory_mib = { "t3.small" = 2048, "t3.medium" = 4096, "t3.large" = 8192, "t3.xlarge" = 16384, "t3.2xlarge" = 32768 }
  fitting_t3    = [for type in ["t3.small", "t3.medium", "t3.large", "t3.xlarge", "t3.2xlarge"] : type if local.t3_memory_mib[type] >= local.memory_needed_mib]
  instance_type = var.instance_type != null ? var.instance_type : try(local.fitting_t3[0], "t3.2xlarge")
}

data "aws_ec2_instance_type" "this" {
  instance_type = local.instance_type
}

################################################################################
# Security group: web ports to allowed_cidrs (443 with a domain only), SSH only to ssh_cidrs
################################################################################

resource "aws_security_group" "instance" {
  name_prefix = "${var.name}-"
  description = "stockstreamer instance: HTTP/HTTPS in, web and database out"
  vpc_id      = data.aws_subnet.instance.vpc_id

  tags = { Name = var.name }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "http" {
  #checkov:skip=CKV_AWS_260:A public dashboard serves port 80 to allowed_cidrs (HTTP-01 challenges and the redirect to HTTPS); narrow allowed_cidrs to restrict it.
  for_each = toset(var.allowed_cidrs)

  security_group_id = aws_security_group.instance.id
  description       = "HTTP to Caddy (redirects to HTTPS when domain_name is set)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_vpc_security_group_ingress_rule" "https" {
  for_each = local.https_cidrs

  security_group_id = aws_security_group.instance.id
  description       = "HTTPS to Caddy (dashboard and API)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_ingress_rule" "http3" {
  for_each = local.https_cidrs

  security_group_id = aws_security_group.instance.id
  description       = "HTTP/3 (QUIC) to Caddy"
  cidr_ipv4         = each.value
  ip_protocol       = "udp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each = toset(var.ssh_cidrs)

  security_group_id = aws_security_group.instance.id
  description       = "SSH from ssh_cidrs only (SSM Session Manager needs none)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
}

# Outbound: packages, images, the market-data vendors (Alpaca, Finnhub, Twelve Data: REST and
# WebSocket over TLS), Let's Encrypt and AWS APIs are all on 80/443.
resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.instance.id
  description       = "HTTPS out: images, packages, vendor APIs, SSM, ACME"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "http" {
  security_group_id = aws_security_group.instance.id
  description       = "HTTP out: Ubuntu package mirrors"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_vpc_security_group_egress_rule" "postgres" {
  count = var.use_rds ? 1 : 0

  security_group_id            = aws_security_group.instance.id
  description                  = "PostgreSQL to the RDS instance"
  referenced_security_group_id = aws_security_group.rds[0].id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

################################################################################
# IAM: Session Manager, and exactly the secrets and database logins the stack uses
################################################################################

locals {
  account_arn = "${data.aws_partition.current.partition}:%s:${var.aws_region}:${data.aws_caller_identity.current.account_id}"

  # The instance's whole policy (nothing managed is attached): the SSM agent's Session Manager
  # channels, the vendors' key parameters, and with RDS the master secret and the IAM logins of the
  # services' two database users.
  instance_policy = {
    Version = "2012-10-17"
    Statement = concat(
      [
        {
          Sid      = "SessionManagerAgent"
          Effect   = "Allow"
          Action   = ["ssm:UpdateInstanceInformation"]
          Resource = "arn:${format(local.account_arn, "ec2")}:instance/*"
        },
        {
          Sid    = "SessionManagerChannels"
          Effect = "Allow"
          Action = [
            "ssmmessages:CreateControlChannel",
            "ssmmessages:CreateDataChannel",
            "ssmmessages:OpenControlChannel",
            "ssmmessages:OpenDataChannel",
          ]
          Resource = "*" # these actions name no resource
        },
      ],
      [
        for arns in length(local.key_parameter_arns) == 0 ? [] : [distinct(local.key_parameter_arns)] : {
          Sid      = "VendorKeys"
          Effect   = "Allow"
          Action   = ["ssm:GetParameter"]
          Resource = arns
        }
      ],
      flatten([
        for db in aws_db_instance.this : [
          {
            Sid      = "DatabaseMasterSecret"
            Effect   = "Allow"
            Action   = ["secretsmanager:GetSecretValue"]
            Resource = db.master_user_secret[0].secret_arn
          },
          {
            Sid      = "DatabaseLogins"
            Effect   = "Allow"
            Action   = ["rds-db:connect"]
            Resource = [for user in local.db_login_users : "arn:${format(local.account_arn, "rds-db")}:dbuser:${db.resource_id}/${user}"]
          },
        ]
      ]),
    )
  }

  # Created by db/users.sql; on RDS they log in with IAM tokens the instance signs.
  db_login_users = ["stockstreamer_fetcher", "stockstreamer_api"]
}

# Who may assume each role: the instance (EC2) and the snapshot schedule (DLM).
locals {
  assume_role_policy = {
    for service in ["ec2", "dlm"] : service => jsonencode({
      Version = "2012-10-17"
      Statement = [{
        Effect    = "Allow"
        Action    = "sts:AssumeRole"
        Principal = { Service = "${service}.amazonaws.com" }
      }]
    })
  }
}

resource "aws_iam_role" "instance" {
  name_prefix        = "${var.name}-"
  assume_role_policy = local.assume_role_policy["ec2"]
}

resource "aws_iam_role_policy" "instance" {
  name   = "stockstreamer-instance"
  role   = aws_iam_role.instance.id
  policy = jsonencode(local.instance_policy)
}

resource "aws_iam_instance_profile" "instance" {
  name_prefix = "${var.name}-"
  role        = aws_iam_role.instance.name
}

################################################################################
# EC2 instance and elastic IP
################################################################################

# The address exists before the instance, so cloud-init can be told its public origin.
resource "aws_eip" "this" {
  domain = "vpc"
  tags   = { Name = var.name }
}

# The instance's cloud-init: names and addresses only, secrets are read on the instance at boot
# (SSM, Secrets Manager).
locals {
  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    region                = var.aws_region
    arch                  = local.arch
    repository_url        = var.repository_url
    repository_commit     = var.repository_ref
    site_address          = var.domain_name != "" ? var.domain_name : ":80"
    public_host           = local.public_host
    public_origin         = local.public_origin
    market_data_provider  = join(",", local.providers)
    history_provider      = var.history_provider
    calendar              = var.calendar
    extended_hours        = var.extended_hours
    vendor_key_parameters = local.key_parameters
    settings              = var.settings
    data_device           = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${replace(aws_ebs_volume.data.id, "-", "")}"
    backup_keep           = var.backup_keep
    use_rds               = var.use_rds
    rds_secret_arn        = var.use_rds ? aws_db_instance.this[0].master_user_secret[0].secret_arn : ""
    rds_address           = var.use_rds ? aws_db_instance.this[0].address : ""
    rds_port              = var.use_rds ? aws_db_instance.this[0].port : 5432
    db_name               = "stockstreamer"
    compose_profiles      = local.compose_profiles
    grafana_route         = local.grafana_public ? "on" : "off"
    grafana_root_url      = local.grafana_public ? "${local.public_origin}/grafana/" : ""
    edge_rate             = var.edge_connection_rate
    edge_burst            = var.edge_connection_burst
    edge_connections      = var.edge_connections_per_address
  })
}

resource "aws_instance" "this" {
  #checkov:skip=CKV_AWS_126:Basic 5-minute CloudWatch metrics suffice for one small instance; detailed monitoring is billed extra.
  ami                    = data.aws_ssm_parameter.ami.insecure_value
  instance_type          = local.instance_type
  subnet_id              = data.aws_subnet.instance.id
  vpc_security_group_ids = [aws_security_group.instance.id]
  iam_instance_profile   = aws_iam_instance_profile.instance.name
  key_name               = var.key_name
  ebs_optimized          = true

  # Reached through the elastic IP only.
  associate_public_ip_address = false

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1          # containers cannot reach the instance's credentials
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    encrypted             = true
    delete_on_termination = true
  }

  # Compressed (cloud-init unpacks it): the script outgrew EC2's 16 KiB of user data in clear.
  user_data_base64            = base64gzip(local.user_data)
  user_data_replace_on_change = false

  tags = { Name = var.name }

  # The boot script reads the secrets: the permission must exist first.
  depends_on = [aws_iam_role_policy.instance]

  lifecycle {
    # A newer AMI must not replace a running instance (and its data); rebuild deliberately.
    ignore_changes = [ami]

    precondition {
      condition     = var.domain_name != "" || var.allow_plain_http
      error_message = "domain_name is empty, so the dashboard and the API would be served over plain HTTP, readable and alterable on the way. Set domain_name to a DNS name for the elastic IP (output public_ip) to get HTTPS from Let's Encrypt, or set allow_plain_http = true to accept plain HTTP knowingly."
    }

    precondition {
      condition     = data.aws_ec2_instance_type.this.memory_size >= local.memory_needed_mib
      error_message = "instance_type ${local.instance_type} has ${data.aws_ec2_instance_type.this.memory_size} MiB of memory; the containers' limits (${local.memory_needed_mib - local.host_reserve_mib} MiB${var.observability ? ", observability included" : ""}${local.api_replicas > 1 ? ", ${local.api_replicas} API replicas" : ""}) and ${local.host_reserve_mib} MiB for the system need ${local.memory_needed_mib} MiB. Choose ${try(local.fitting_t3[0], "a larger type")} or another type with at least that much, or leave instance_type unset to pick one."
    }

    precondition {
      condition     = length(local.missing_key_parameters) == 0
      error_message = "market_data_provider ${var.market_data_provider}${var.history_provider != "" ? " with history_provider ${var.history_provider}" : ""} needs ${join(", ", local.missing_key_parameters)}: the names of SSM SecureString parameters holding the vendors' keys (aws ssm put-parameter --type SecureString)."
    }

    # The container database's max_connections (30) gives the API login room for two replicas'
    # pools (docker-compose.yml); RDS sizes its own by the instance class.
    precondition {
      condition     = var.use_rds || local.api_replicas <= 2
      error_message = "settings.STOCKSTREAMER_API_REPLICAS = ${local.api_replicas}: the container database holds connections for at most 2 API replicas. Set use_rds = true for more."
    }

    # postgres_exporter, its monitor login and the database alerts are built for the container
    # database; RDS publishes its own metrics to CloudWatch.
    precondition {
      condition     = !(var.observability && var.use_rds)
      error_message = "observability runs postgres_exporter against the container database and is not available with use_rds = true: watch RDS through its CloudWatch metrics (and Performance Insights) instead, or set use_rds = false."
    }
  }
}

resource "aws_eip_association" "this" {
  allocation_id = aws_eip.this.id
  instance_id   = aws_instance.this.id
}

################################################################################
# Data volume: the database, secrets and dumps, apart from the root disk; daily snapshots
################################################################################

resource "aws_ebs_volume" "data" {
  #checkov:skip=CKV_AWS_189:Encrypted with the account's AWS-managed EBS key; a customer-managed key adds cost and key administration for one small volume.
  availability_zone = data.aws_subnet.instance.availability_zone
  size              = var.data_volume_size
  type              = "gp3"
  encrypted         = true

  # The snapshot policy below selects volumes by this tag.
  tags = { Name = "${var.name}-data", Snapshots = "${var.name}-data" }
}

resource "aws_volume_attachment" "data" {
  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.data.id
  instance_id = aws_instance.this.id

  # Unmounted cleanly (the instance stops first) when the instance is replaced.
  stop_instance_before_detaching = true
}

resource "aws_iam_role" "snapshots" {
  name_prefix        = "${var.name}-dlm-"
  assume_role_policy = local.assume_role_policy["dlm"]
}

resource "aws_iam_role_policy_attachment" "snapshots" {
  role       = aws_iam_role.snapshots.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole"
}

resource "aws_dlm_lifecycle_policy" "data" {
  description        = "${var.name} daily snapshots of the data volume"
  execution_role_arn = aws_iam_role.snapshots.arn
  state              = "ENABLED"

  policy_details {
    resource_types = ["VOLUME"]
    target_tags    = { Snapshots = "${var.name}-data" }

    schedule {
      name      = "daily"
      copy_tags = true

      create_rule {
        interval      = 24
        interval_unit = "HOURS"
        times         = [var.snapshot_time]
      }

      retain_rule {
        count = var.snapshot_retention
      }
    }
  }
}

################################################################################
# Optional: Amazon RDS for PostgreSQL (use_rds = true)
################################################################################

data "aws_subnets" "vpc" {
  count = var.use_rds ? 1 : 0

  filter {
    name   = "vpc-id"
    values = [data.aws_subnet.instance.vpc_id]
  }
}

resource "aws_security_group" "rds" {
  count = var.use_rds ? 1 : 0

  name_prefix = "${var.name}-rds-"
  description = "stockstreamer RDS: PostgreSQL from the instance only"
  vpc_id      = data.aws_subnet.instance.vpc_id

  tags = { Name = "${var.name}-rds" }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "rds_from_instance" {
  count = var.use_rds ? 1 : 0

  security_group_id            = aws_security_group.rds[0].id
  description                  = "PostgreSQL from the stockstreamer instance"
  referenced_security_group_id = aws_security_group.instance.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_db_subnet_group" "this" {
  count = var.use_rds ? 1 : 0

  name_prefix = "${var.name}-"
  description = "stockstreamer RDS subnets"
  subnet_ids  = data.aws_subnets.vpc[0].ids
}

resource "aws_db_parameter_group" "this" {
  count = var.use_rds ? 1 : 0

  name_prefix = "${var.name}-"
  family      = "postgres${var.rds_engine_version}"
  description = "stockstreamer: TLS only, DDL and slow statements logged"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_db_instance" "this" {
  #checkov:skip=CKV_AWS_157:Multi-AZ doubles the cost; one instance with automated backups is this deployment's scale.
  #checkov:skip=CKV_AWS_118:Enhanced monitoring is billed per instance; basic CloudWatch metrics and the exported logs cover one small database.
  #checkov:skip=CKV_AWS_353:Performance Insights is not offered on every small instance class; enable it for larger classes.
  #checkov:skip=CKV_AWS_354:Performance Insights is off (see CKV_AWS_353), so it has no key to choose.
  count = var.use_rds ? 1 : 0

  identifier_prefix = "${var.name}-"
  engine            = "postgres"
  engine_version    = var.rds_engine_version
  instance_class    = var.rds_instance_class
  allocated_storage = var.rds_allocated_storage
  storage_type      = "gp3"
  storage_encrypted = true
  db_name           = "stockstreamer"
  username          = "stockstreamer"

  # RDS generates the password and keeps it in Secrets Manager; it never appears in user_data.
  manage_master_user_password = true

  db_subnet_group_name   = aws_db_subnet_group.this[0].name
  vpc_security_group_ids = [aws_security_group.rds[0].id]
  parameter_group_name   = aws_db_parameter_group.this[0].name
  publicly_accessible    = false

  backup_retention_period             = var.rds_backup_retention_days
  copy_tags_to_snapshot               = true
  deletion_protection                 = var.rds_deletion_protection
  skip_final_snapshot                 = false
  final_snapshot_identifier           = "${var.name}-final"
  auto_minor_version_upgrade          = true
  iam_database_authentication_enabled = true
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]

  tags = { Name = var.name }
}
