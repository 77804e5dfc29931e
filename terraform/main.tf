provider "aws" {
  region = var.aws_region

  default_tags {
    tags = local.default_tags
  }
}

locals {
  # Also on what the provider's default tags do not reach: the API instances a launch template starts.
  default_tags = merge({ Project = "stockstreamer", ManagedBy = "terraform" }, var.tags)
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

  # api_instances > 1 (scale-out): a load balancer in front of a group of API instances; this
  # instance becomes the singleton (the fetcher, the migrations and database users) and serves
  # nothing itself, so it opens no web port.
  scale_out = var.api_instances > 1

  # Caddy's ports, where this instance serves the site: 80 always, and 443 (TCP, and UDP for
  # HTTP/3) on a domain's site.
  http_cidrs  = local.scale_out ? toset([]) : toset(var.allowed_cidrs)
  https_cidrs = var.domain_name != "" && !local.scale_out ? toset(var.allowed_cidrs) : toset([])

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

  # Secret files read from SSM at every start, on the instance that runs the fetcher and the
  # alerts service: the vendors' keys, and the alert channels when a parameter names them.
  secret_parameters = merge(local.key_parameters, var.alert_channels_parameter == "" ? {} : {
    "alert-channels.yaml" = var.alert_channels_parameter
  })
  alert_channels_arns = var.alert_channels_parameter == "" ? [] : [
    "arn:${data.aws_partition.current.partition}:ssm:${var.aws_region}:${data.aws_caller_identity.current.account_id}:parameter/${trimprefix(var.alert_channels_parameter, "/")}"
  ]
}

################################################################################
# The API's write tokens
################################################################################

# One SSM SecureString parameter, one token a line, shared by every instance that runs the API
# and read by `terraform output api_token_command`. Not a resource here: the instance that runs
# the fetcher creates it at its first start with a token it makes (deploy/make-secrets' kind),
# so the token is in no Terraform state and no user data; later starts only read it, so tokens
# put there by hand (a rotation) are kept. `terraform destroy` leaves it: delete it then.
locals {
  api_token_parameter     = "/${var.name}/api-token"
  api_token_parameter_arn = "arn:${data.aws_partition.current.partition}:ssm:${var.aws_region}:${data.aws_caller_identity.current.account_id}:parameter/${trimprefix(local.api_token_parameter, "/")}"
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

# Scale-out: the load balancer's subnets, where the API instances run too. Unless named, two of
# the default VPC's (one per availability zone, the instance's first): the least the load balancer
# takes, and each zone it spans holds a public IPv4 address of its own, billed like any other.
locals {
  alb_subnet_ids = length(var.alb_subnet_ids) > 0 ? var.alb_subnet_ids : var.subnet_id == null ? slice(sort(data.aws_subnets.default[0].ids), 0, min(2, length(data.aws_subnets.default[0].ids))) : []
}

data "aws_subnet" "alb" {
  for_each = local.scale_out ? toset(local.alb_subnet_ids) : toset([])
  id       = each.value
}

locals {
  # The load balancer's nodes take their addresses in its subnets: the API instances believe the
  # X-Forwarded-For of those networks alone.
  load_balancer_networks = sort(distinct([for subnet in data.aws_subnet.alb : subnet.cidr_block]))
  alb_vpc_ids            = distinct([for subnet in data.aws_subnet.alb : subnet.vpc_id])

  web_arch = can(regex("^[a-z]+[0-9]+g", var.api_instance_type)) ? "arm64" : "amd64"
}

# The API instances' image: the same lookup, for their own architecture.
data "aws_ssm_parameter" "web_ami" {
  count = local.scale_out ? 1 : 0
  name  = "/aws/service/canonical/ubuntu/server/24.04/stable/current/${local.web_arch}/hvm/ebs-gp3/ami-id"
}

################################################################################
# Memory: the containers' limits must fit the instance
################################################################################

locals {
  # The containers' memory limits in MiB, mirroring docker-compose.yml and deploy/compose*.yaml
  # (a test holds them to compose's own numbers): the default stack with the proxy profile, the
  # one-shots included; what the observability profile adds; each API replica past the first.
  compose_memory_mib = {
    default_stack     = 2560
    observability     = 960
    extra_api_replica = 1024
    # An API instance of the scale-out mode: api, dashboard and the secrets one-shot.
    web_stack = 1344
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

# The API instances (scale-out): their containers' limits and the same reserve for the system.
locals {
  web_memory_needed_mib = local.compose_memory_mib.web_stack + local.host_reserve_mib
}

data "aws_ec2_instance_type" "web" {
  count         = local.scale_out ? 1 : 0
  instance_type = var.api_instance_type
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
  for_each = local.http_cidrs

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
  # channels, the API token's parameter (created here at the first start), the vendors' key
  # parameters and the alert channels', and with RDS the master secret and the IAM logins of the
  # services' database users.
  instance_policy = {
    Version = "2012-10-17"
    Statement = concat(
      local.session_manager_statements,
      [
        {
          Sid      = "ApiToken"
          Effect   = "Allow"
          Action   = ["ssm:GetParameter", "ssm:PutParameter"]
          Resource = [local.api_token_parameter_arn]
        }
      ],
      [
        for arns in length(local.key_parameter_arns) == 0 ? [] : [distinct(local.key_parameter_arns)] : {
          Sid      = "VendorKeys"
          Effect   = "Allow"
          Action   = ["ssm:GetParameter"]
          Resource = arns
        }
      ],
      [
        for arns in length(local.alert_channels_arns) == 0 ? [] : [local.alert_channels_arns] : {
          Sid      = "AlertChannels"
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

  # Created by db/users.sql; on RDS they log in with IAM tokens the instance signs: the fetcher,
  # the API and the alerts service, or with api_instances > 1 the fetcher and the alerts service
  # alone here (the API instances sign their own).
  db_login_users = local.scale_out ? ["stockstreamer_fetcher", "stockstreamer_alerts"] : ["stockstreamer_fetcher", "stockstreamer_api", "stockstreamer_alerts"]

  # Every instance's Session Manager agent: its registration and its shell channels.
  session_manager_statements = [
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
  ]

  # An API instance (scale-out) reads no key and no database secret: Session Manager, the API's
  # write tokens (read only), and the API's own database login.
  web_policy = {
    Version = "2012-10-17"
    Statement = concat(
      local.session_manager_statements,
      [
        {
          Sid      = "ApiToken"
          Effect   = "Allow"
          Action   = ["ssm:GetParameter"]
          Resource = [local.api_token_parameter_arn]
        }
      ],
      [
        for db in aws_db_instance.this : {
          Sid      = "DatabaseLogins"
          Effect   = "Allow"
          Action   = ["rds-db:connect"]
          Resource = ["arn:${format(local.account_arn, "rds-db")}:dbuser:${db.resource_id}/stockstreamer_api"]
        }
      ],
    )
  }
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

resource "aws_iam_role" "web" {
  count = local.scale_out ? 1 : 0

  name_prefix        = "${var.name}-api-"
  assume_role_policy = local.assume_role_policy["ec2"]
}

resource "aws_iam_role_policy" "web" {
  count = local.scale_out ? 1 : 0

  name   = "stockstreamer-api-instance"
  role   = aws_iam_role.web[0].id
  policy = jsonencode(local.web_policy)
}

resource "aws_iam_instance_profile" "web" {
  count = local.scale_out ? 1 : 0

  name_prefix = "${var.name}-api-"
  role        = aws_iam_role.web[0].name
}

################################################################################
# EC2 instance and elastic IP
################################################################################

# The address exists before the instance, so cloud-init can be told its public origin.
resource "aws_eip" "this" {
  domain = "vpc"
  tags   = { Name = var.name }
}

# The instances' cloud-init: names and addresses only, secrets are read on the instance at boot
# (SSM, Secrets Manager). One template for every role: "all" (api_instances = 1: the whole stack
# behind Caddy), "singleton" (scale-out: what must run once, the fetcher and the one-shots, and no
# web port) and "web" (scale-out: an API instance, the API and the dashboard behind the load
# balancer, no data volume, no key, no master secret).
locals {
  cloud_init = {
    region                 = var.aws_region
    repository_url         = var.repository_url
    repository_commit      = var.repository_ref
    site_address           = var.domain_name != "" ? var.domain_name : ":80"
    public_host            = local.public_host
    public_origin          = local.public_origin
    market_data_provider   = join(",", local.providers)
    history_provider       = var.history_provider
    calendar               = var.calendar
    extended_hours         = var.extended_hours
    settings               = var.settings
    backup_keep            = var.backup_keep
    use_rds                = var.use_rds
    rds_address            = var.use_rds ? aws_db_instance.this[0].address : ""
    rds_port               = var.use_rds ? aws_db_instance.this[0].port : 5432
    db_name                = "stockstreamer"
    grafana_route          = local.grafana_public ? "on" : "off"
    grafana_root_url       = local.grafana_public ? "${local.public_origin}/grafana/" : ""
    edge_rate              = var.edge_connection_rate
    edge_burst             = var.edge_connection_burst
    edge_connections       = var.edge_connections_per_address
    load_balancer_networks = ""
    api_token_parameter    = local.api_token_parameter
  }

  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", merge(local.cloud_init, {
    role                  = local.scale_out ? "singleton" : "all"
    arch                  = local.arch
    vendor_key_parameters = local.secret_parameters
    data_device           = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${replace(aws_ebs_volume.data.id, "-", "")}"
    rds_secret_arn        = var.use_rds ? aws_db_instance.this[0].master_user_secret[0].secret_arn : ""
    # The singleton runs no proxy, and names its services: the fetcher and the alerts service
    # (one each per deployment) and, before them, the one-shots they depend on (secrets,
    # migrate, db-users). Empty: every service.
    compose_profiles  = local.scale_out ? "" : local.compose_profiles
    compose_services  = local.scale_out ? ["fetcher", "alerts"] : []
    db_token_services = [for user in local.db_login_users : trimprefix(user, "stockstreamer_")]
  }))

  web_user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", merge(local.cloud_init, {
    role                   = "web"
    arch                   = local.web_arch
    vendor_key_parameters  = {}
    data_device            = ""
    rds_secret_arn         = ""
    compose_profiles       = ""
    compose_services       = ["api", "dashboard"]
    db_token_services      = ["api"]
    load_balancer_networks = join(",", local.load_balancer_networks)
  }))
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

    # Scale-out: every API instance reads the one database, and the fetcher on this instance
    # writes it; the container database is reachable from this instance alone.
    precondition {
      condition     = !local.scale_out || var.use_rds
      error_message = "api_instances > 1 needs use_rds = true: the API instances and this instance's fetcher must share one database, and the postgres container is reachable from this instance alone. Set use_rds = true, or api_instances = 1."
    }

    precondition {
      condition     = !local.scale_out || var.domain_name != ""
      error_message = "api_instances > 1 needs domain_name: the load balancer serves HTTPS with an ACM certificate for that name, validated by a DNS record you create (output acm_validation_records), and the name then points at the load balancer (output load_balancer_dns_name). The load balancer serves no plain HTTP site."
    }

    precondition {
      condition     = !local.scale_out || length(local.alb_subnet_ids) >= 2
      error_message = "api_instances > 1 needs the load balancer's subnets, in at least two availability zones: with subnet_id set, name public subnets of its VPC in alb_subnet_ids (unset, the default VPC's default subnets are used)."
    }

    precondition {
      condition     = !local.scale_out || alltrue([for vpc in local.alb_vpc_ids : vpc == data.aws_subnet.instance.vpc_id])
      error_message = "alb_subnet_ids must be subnets of the instance's VPC (${data.aws_subnet.instance.vpc_id}): the load balancer, the API instances, this instance and RDS share it."
    }

    # The API instances are the replicas: each runs one API container (its workers on every core).
    precondition {
      condition     = !local.scale_out || local.api_replicas == 1
      error_message = "settings.STOCKSTREAMER_API_REPLICAS = ${local.api_replicas}: with api_instances > 1 the API runs on the API instances, one container each behind the load balancer, and not on this instance. Leave STOCKSTREAMER_API_REPLICAS unset and raise api_instances instead."
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

resource "aws_vpc_security_group_ingress_rule" "rds_from_web" {
  count = local.scale_out && var.use_rds ? 1 : 0

  security_group_id            = aws_security_group.rds[0].id
  description                  = "PostgreSQL from the stockstreamer API instances"
  referenced_security_group_id = aws_security_group.web[0].id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

################################################################################
# Scale-out (api_instances > 1): an Application Load Balancer in front of an Auto Scaling group of
# API instances, each running the API and the dashboard; the instance above runs the rest once
################################################################################

locals {
  # The ports the API instances publish (deploy/compose.web.yaml; a test holds them equal).
  web_ports = { api = 8000, dashboard = 5006 }

  # Load balancer and target group names: at most 32 characters.
  lb_name = trimsuffix(substr(var.name, 0, 26), "-")

  # The dashboard's Content-Security-Policy, as Caddy sends it on the single instance (a test holds
  # them equal); the load balancer sets one policy on every response, and the API's JSON needs none.
  dashboard_csp = "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data: https:; connect-src 'self'; font-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
}

# Security groups: the internet (allowed_cidrs) reaches the load balancer alone; the load balancer
# alone reaches the API instances, on their two ports; RDS takes the instances alone (above).
resource "aws_security_group" "alb" {
  count = local.scale_out ? 1 : 0

  name_prefix = "${var.name}-alb-"
  description = "stockstreamer load balancer: HTTP/HTTPS in, the API instances out"
  vpc_id      = data.aws_subnet.instance.vpc_id

  tags = { Name = "${var.name}-alb" }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  for_each = local.scale_out ? toset(var.allowed_cidrs) : toset([])

  security_group_id = aws_security_group.alb[0].id
  description       = "HTTP to the load balancer (redirected to HTTPS)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each = local.scale_out ? toset(var.allowed_cidrs) : toset([])

  security_group_id = aws_security_group.alb[0].id
  description       = "HTTPS to the load balancer (dashboard and API)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "alb_to_web" {
  for_each = local.scale_out ? local.web_ports : {}

  security_group_id            = aws_security_group.alb[0].id
  description                  = "To the API instances' ${each.key}: requests and health checks"
  referenced_security_group_id = aws_security_group.web[0].id
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
}

resource "aws_security_group" "web" {
  count = local.scale_out ? 1 : 0

  name_prefix = "${var.name}-api-"
  description = "stockstreamer API instances: the load balancer in; web and database out"
  vpc_id      = data.aws_subnet.instance.vpc_id

  tags = { Name = "${var.name}-api" }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "web_from_alb" {
  for_each = local.scale_out ? local.web_ports : {}

  security_group_id            = aws_security_group.web[0].id
  description                  = "The ${each.key}'s port, from the load balancer only"
  referenced_security_group_id = aws_security_group.alb[0].id
  ip_protocol                  = "tcp"
  from_port                    = each.value
  to_port                      = each.value
}

resource "aws_vpc_security_group_ingress_rule" "web_ssh" {
  for_each = local.scale_out ? toset(var.ssh_cidrs) : toset([])

  security_group_id = aws_security_group.web[0].id
  description       = "SSH from ssh_cidrs only (SSM Session Manager needs none)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
}

# Outbound as the instance's: packages, images, the repository, PyPI (the image build) and AWS
# APIs on 80/443, and PostgreSQL to RDS. The API instances call no market-data vendor.
resource "aws_vpc_security_group_egress_rule" "web_https" {
  count = local.scale_out ? 1 : 0

  security_group_id = aws_security_group.web[0].id
  description       = "HTTPS out: images, packages, the repository, SSM"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "web_http" {
  count = local.scale_out ? 1 : 0

  security_group_id = aws_security_group.web[0].id
  description       = "HTTP out: Ubuntu package mirrors"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_vpc_security_group_egress_rule" "web_postgres" {
  count = local.scale_out && var.use_rds ? 1 : 0

  security_group_id            = aws_security_group.web[0].id
  description                  = "PostgreSQL to the RDS instance"
  referenced_security_group_id = aws_security_group.rds[0].id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

# HTTPS: an ACM certificate for domain_name, validated by a DNS record. The DNS is not managed
# here: the record to create is output acm_validation_records, and the validation below waits
# (apply blocks) until ACM finds it.
resource "aws_acm_certificate" "web" {
  count = local.scale_out && var.domain_name != "" ? 1 : 0

  domain_name       = var.domain_name
  validation_method = "DNS"

  options {
    certificate_transparency_logging_preference = "ENABLED"
  }

  tags = { Name = var.name }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_acm_certificate_validation" "web" {
  count = length(aws_acm_certificate.web)

  certificate_arn = aws_acm_certificate.web[0].arn

  timeouts {
    create = "2h"
  }
}

resource "aws_lb" "web" {
  #checkov:skip=CKV2_AWS_28:No AWS WAF web ACL (billed per ACL, rule and request); the API and the dashboard limit each client address themselves, through the load balancer's X-Forwarded-For.
  count = local.scale_out ? 1 : 0

  name               = "${local.lb_name}-alb"
  internal           = false
  load_balancer_type = "application"
  security_groups    = [aws_security_group.alb[0].id]
  subnets            = local.alb_subnet_ids

  # The load balancer closes a connection, the client's and the instance's, after this long with
  # no byte either way. An SSE stream carries a heartbeat every 15 s, but the dashboard's
  # WebSocket carries nothing while no price moves (a closed market: nights, weekends) and
  # neither end pings it: at the default 60 s every idle page would lose its session each
  # minute. An hour keeps a page open through a quiet hour; past that (and at 4000 s, the most
  # allowed) its page reloads, as after any cut. It holds nothing else open: clients are bounded by
  # the API's and the dashboard's own caps.
  idle_timeout               = 3600
  drop_invalid_header_fields = true
  enable_deletion_protection = var.alb_deletion_protection

  dynamic "access_logs" {
    for_each = var.alb_access_logs_bucket != "" ? [var.alb_access_logs_bucket] : []
    content {
      bucket  = access_logs.value
      prefix  = var.name
      enabled = true
    }
  }

  tags = { Name = var.name }
}

# The API: /api/* and /openapi.json. Streams are long requests: "least outstanding requests" sends
# each new one to the instance with the fewest open (Caddy's least_conn on the single instance).
# Health: /readyz, the database answering.
resource "aws_lb_target_group" "api" {
  #checkov:skip=CKV_AWS_378:TLS ends at the load balancer; inside the VPC it reaches the API instances over HTTP, on a port their security group opens to it alone.
  count = local.scale_out ? 1 : 0

  name                          = "${local.lb_name}-api"
  port                          = local.web_ports.api
  protocol                      = "HTTP"
  vpc_id                        = data.aws_subnet.instance.vpc_id
  target_type                   = "instance"
  load_balancing_algorithm_type = "least_outstanding_requests"

  # A leaving instance (scale-in, instance refresh) is given this long to finish, then its open
  # streams are cut: they never finish by themselves, and their clients reconnect to the others
  # (resuming with Last-Event-ID), so waiting longer only delays the change.
  deregistration_delay = 30

  health_check {
    enabled             = true
    path                = "/readyz"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = { Name = "${var.name}-api" }
}

# The dashboard: everything else. Sticky: Bokeh's page load creates the session, signed with a key
# of that process alone, and its WebSocket must reach the same process to open it; the load
# balancer's cookie (AWSALB, on the page's response, sent back with the WebSocket's upgrade)
# brings it there. An hour covers any page load and its reloads; a viewer who comes back later is
# balanced afresh.
resource "aws_lb_target_group" "dashboard" {
  count = local.scale_out ? 1 : 0

  name                 = "${local.lb_name}-dash"
  port                 = local.web_ports.dashboard
  protocol             = "HTTP"
  vpc_id               = data.aws_subnet.instance.vpc_id
  target_type          = "instance"
  deregistration_delay = 30 # as the API's: WebSockets never finish by themselves

  stickiness {
    enabled         = true
    type            = "lb_cookie"
    cookie_duration = 3600
  }

  # /healthz: the process serves pages (it serves them while the API is down, saying so).
  health_check {
    enabled             = true
    path                = "/healthz"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = { Name = "${var.name}-dashboard" }
}

# HTTPS with TLS 1.3, and 1.2 with forward-secret AEAD ciphers only. The load balancer adds the
# headers Caddy adds on the single instance (it has no Referrer-Policy or Permissions-Policy to set;
# Caddy's, not the ALB's, also strips the services' Server header).
resource "aws_lb_listener" "https" {
  count = length(aws_acm_certificate_validation.web)

  load_balancer_arn = aws_lb.web[0].arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-Res-2021-06"
  certificate_arn   = aws_acm_certificate_validation.web[0].certificate_arn

  routing_http_response_strict_transport_security_header_value = "max-age=31536000; includeSubDomains"
  routing_http_response_x_content_type_options_header_value    = "nosniff"
  routing_http_response_x_frame_options_header_value           = "DENY"
  routing_http_response_content_security_policy_header_value   = local.dashboard_csp
  routing_http_response_server_enabled                         = false

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.dashboard[0].arn
  }

  tags = { Name = var.name }
}

resource "aws_lb_listener" "http" {
  count = local.scale_out ? 1 : 0

  load_balancer_arn = aws_lb.web[0].arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "redirect"

    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }

  tags = { Name = var.name }
}

# The same paths as Caddy's site: the Prometheus endpoints and the interactive docs (which load
# their assets from a third-party CDN) stay off the internet; the API's; the rest, the dashboard.
resource "aws_lb_listener_rule" "private" {
  count = length(aws_lb_listener.https)

  listener_arn = aws_lb_listener.https[0].arn
  priority     = 10

  action {
    type = "fixed-response"

    fixed_response {
      content_type = "text/plain"
      message_body = "not found"
      status_code  = "404"
    }
  }

  condition {
    path_pattern {
      values = ["/metrics*", "/docs*", "/redoc*"]
    }
  }

  tags = { Name = var.name }
}

resource "aws_lb_listener_rule" "api" {
  count = length(aws_lb_listener.https)

  listener_arn = aws_lb_listener.https[0].arn
  priority     = 20

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api[0].arn
  }

  condition {
    path_pattern {
      values = ["/api/*", "/openapi.json"]
    }
  }

  tags = { Name = var.name }
}

# The API instances: the instance's image lookup, IMDSv2, an encrypted root volume, a profile of
# their own, and their cloud-init (role "web"), compressed like the instance's.
resource "aws_launch_template" "web" {
  #checkov:skip=CKV_AWS_88:The API instances reach packages, images and AWS through their own public address (there is no NAT gateway, which costs more than an instance); their security group admits the load balancer alone.
  count = local.scale_out ? 1 : 0

  name_prefix            = "${var.name}-api-"
  description            = "stockstreamer API instance: the API and the dashboard behind the load balancer"
  image_id               = data.aws_ssm_parameter.web_ami[0].insecure_value
  instance_type          = var.api_instance_type
  key_name               = var.key_name
  ebs_optimized          = true
  update_default_version = true
  user_data              = base64gzip(local.web_user_data)

  iam_instance_profile {
    name = aws_iam_instance_profile.web[0].name
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1          # containers cannot reach the instance's credentials
  }

  block_device_mappings {
    device_name = "/dev/sda1" # the root device of Canonical's Ubuntu images

    ebs {
      volume_type           = "gp3"
      volume_size           = var.root_volume_size
      encrypted             = true
      delete_on_termination = true
    }
  }

  network_interfaces {
    associate_public_ip_address = true
    security_groups             = [aws_security_group.web[0].id]
    delete_on_termination       = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.default_tags, { Name = "${var.name}-api" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.default_tags, { Name = "${var.name}-api" })
  }

  tags = { Name = "${var.name}-api" }

  lifecycle {
    # As the instance's: a newer AMI replaces nothing (each instance upgrades its packages at boot).
    ignore_changes = [image_id]

    precondition {
      condition     = data.aws_ec2_instance_type.web[0].memory_size >= local.web_memory_needed_mib
      error_message = "api_instance_type ${var.api_instance_type} has ${data.aws_ec2_instance_type.web[0].memory_size} MiB of memory; the API's and the dashboard's limits (${local.compose_memory_mib.web_stack} MiB) and ${local.host_reserve_mib} MiB for the system need ${local.web_memory_needed_mib} MiB. Choose a type with at least that much (t3.small, the default, has 2048 MiB)."
    }
  }
}

resource "aws_autoscaling_group" "web" {
  count = local.scale_out ? 1 : 0

  name_prefix         = "${var.name}-api-"
  min_size            = var.api_instances
  desired_capacity    = var.api_instances
  max_size            = 2 * var.api_instances # room for replacements launched before what they replace
  vpc_zone_identifier = local.alb_subnet_ids
  target_group_arns   = [aws_lb_target_group.api[0].arn, aws_lb_target_group.dashboard[0].arn]

  # An instance whose API or dashboard fails the load balancer's health checks is replaced. The
  # first boot installs Docker and builds the image (5-10 minutes): no verdict before 15.
  health_check_type         = "ELB"
  health_check_grace_period = 900

  # Launch the replacement first, and end the old instance only once the new one is healthy: an
  # outage of RDS fails every instance's /readyz at once, and replacements that cannot become
  # healthy either then end nothing, so the instances serve again the moment the database does.
  instance_maintenance_policy {
    min_healthy_percentage = 100
    max_healthy_percentage = 200
  }

  launch_template {
    id      = aws_launch_template.web[0].id
    version = aws_launch_template.web[0].latest_version
  }

  # A new launch template (another repository_ref, settings) rolls through the group, one
  # replacement healthy before each old instance goes.
  instance_refresh {
    strategy = "Rolling"
  }

  # The provider's default tags do not reach a group; its instances are tagged by the template.
  dynamic "tag" {
    for_each = merge(local.default_tags, { Name = "${var.name}-api" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false
    }
  }

  # The boot reads the API's database login: the permission must exist first.
  depends_on = [aws_iam_role_policy.web]
}
