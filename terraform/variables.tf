################################################################################
# Placement
################################################################################

variable "aws_region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Name prefix of every resource (and the Name tag)."
  type        = string
  default     = "stockstreamer"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must be 2-31 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

variable "subnet_id" {
  description = "Public subnet of the instance; null picks a default subnet of the default VPC."
  type        = string
  default     = null
}

################################################################################
# Instance
################################################################################

variable "instance_type" {
  description = "EC2 instance type; Graviton types (t4g, m7g, ...) get the arm64 image. null (the default) picks the smallest t3 whose memory holds the containers' limits plus a reserve for the system: t3.small (2 GiB) for the default stack, t3.medium (4 GiB) with observability. A type given here is checked against the same need, and refused with the type to choose if too small."
  type        = string
  default     = null
}

variable "root_volume_size" {
  description = "Size of the encrypted root volume in GiB (system and container images)."
  type        = number
  default     = 20

  validation {
    condition     = var.root_volume_size >= 12
    error_message = "root_volume_size must be at least 12 GiB."
  }
}

variable "data_volume_size" {
  description = "Size of the encrypted data volume in GiB: the container database, its dumps and the secret files."
  type        = number
  default     = 10

  validation {
    condition     = var.data_volume_size >= 1
    error_message = "data_volume_size must be at least 1 GiB."
  }
}

variable "snapshot_time" {
  description = "UTC time (HH:MM) of the daily snapshot of the data volume."
  type        = string
  default     = "03:00"

  validation {
    condition     = can(regex("^([01][0-9]|2[0-3]):[0-5][0-9]$", var.snapshot_time))
    error_message = "snapshot_time must be HH:MM (UTC)."
  }
}

variable "snapshot_retention" {
  description = "Daily snapshots of the data volume to keep."
  type        = number
  default     = 7

  validation {
    condition     = var.snapshot_retention >= 1 && var.snapshot_retention <= 1000
    error_message = "snapshot_retention must be 1-1000."
  }
}

variable "backup_keep" {
  description = "Most daily pg_dump files of the container database kept on the data volume: fewer when keeping them would leave less than twice the newest dump free on it, and never fewer than the newest (not used with RDS, which has its own backups)."
  type        = number
  default     = 14

  validation {
    condition     = var.backup_keep >= 1
    error_message = "backup_keep must be at least 1."
  }
}

variable "key_name" {
  description = "EC2 key pair for SSH; null (the default) leaves SSH to SSM Session Manager."
  type        = string
  default     = null
}

################################################################################
# Network access
################################################################################

variable "allowed_cidrs" {
  description = "IPv4 CIDRs that may reach the dashboard and API (HTTP and HTTPS)."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = alltrue([for c in var.allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "allowed_cidrs must be IPv4 CIDR blocks."
  }
}

variable "ssh_cidrs" {
  description = "IPv4 CIDRs allowed SSH (port 22); empty (the default) opens no SSH at all."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.ssh_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "ssh_cidrs must be IPv4 CIDR blocks, and not the whole internet."
  }
}

variable "domain_name" {
  description = "DNS name pointing at the elastic IP; set it for automatic HTTPS (Let's Encrypt) and HTTP/3. Empty: plain HTTP by IP, refused unless allow_plain_http. With api_instances > 1 it is required and points at the load balancer instead (output load_balancer_dns_name), whose ACM certificate is validated by a DNS record (output acm_validation_records)."
  type        = string
  default     = ""
}

variable "allow_plain_http" {
  description = "Accept a deployment without domain_name, served over plain HTTP by IP (a trial, or allowed_cidrs you trust end to end). Off by default: without a domain the plan is refused. HTTPS and HTTP/3 (443, TCP and UDP) are opened only with a domain."
  type        = bool
  default     = false
}

variable "edge_connection_rate" {
  description = "New connections per second one client address may open to ports 80/443 (TCP, and QUIC flows on UDP 443), on average; the instance's kernel drops the excess before Docker sees it. A browser opens a few per page; raise it for many users behind one shared address."
  type        = number
  default     = 10

  validation {
    condition     = var.edge_connection_rate >= 1 && floor(var.edge_connection_rate) == var.edge_connection_rate
    error_message = "edge_connection_rate must be a whole number of connections per second, at least 1."
  }
}

variable "edge_connection_burst" {
  description = "New connections one client address may open at once above edge_connection_rate (a page load over HTTP/1.1 opens up to six)."
  type        = number
  default     = 40

  validation {
    condition     = var.edge_connection_burst >= 1 && floor(var.edge_connection_burst) == var.edge_connection_burst
    error_message = "edge_connection_burst must be a whole number, at least 1."
  }
}

variable "edge_connections_per_address" {
  description = "Open connections one client address may hold to ports 80/443 at a time (streams and websockets included); a new one beyond it is dropped. Keep it above the API's open streams per address."
  type        = number
  default     = 64

  validation {
    condition     = var.edge_connections_per_address >= 1 && floor(var.edge_connections_per_address) == var.edge_connections_per_address
    error_message = "edge_connections_per_address must be a whole number, at least 1."
  }
}

################################################################################
# Application
################################################################################

variable "repository_url" {
  description = "HTTPS URL of the stockstreamer git repository the instance clones."
  type        = string

  validation {
    condition     = can(regex("^https://", var.repository_url))
    error_message = "repository_url must be an https:// URL."
  }
}

variable "repository_ref" {
  description = "The commit to deploy, as its full 40-hex SHA (`git rev-parse v1.2.0^{commit}`): tags and branches can move, a commit cannot, so a rebuild or a retried first boot runs exactly the same code. The instance verifies it checked out this commit."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{40}$", var.repository_ref))
    error_message = "repository_ref must be a full commit SHA, 40 lowercase hex digits (git rev-parse v1.2.0^{commit}): a tag or a branch can be moved to other code."
  }
}

variable "market_data_provider" {
  description = "Value of STOCKSTREAMER_PROVIDER: one provider, or an ordered chain of them, comma-separated (\"alpaca,finnhub\"): the first is used while it works, the next ones take over when it fails. Names: simulated (no key), finnhub, twelvedata, alpaca. Every vendor named here or as history_provider needs its key parameters (finnhub_api_key_parameter, twelvedata_api_key_parameter, alpaca_api_key_id_parameter and alpaca_api_secret_key_parameter)."
  type        = string
  default     = "simulated"

  validation {
    condition     = alltrue([for name in split(",", var.market_data_provider) : contains(["simulated", "finnhub", "twelvedata", "alpaca"], trimspace(name))])
    error_message = "market_data_provider must be simulated, finnhub, twelvedata or alpaca, or several of them comma-separated in order of preference (\"alpaca,finnhub\")."
  }
}

variable "history_provider" {
  description = "Value of STOCKSTREAMER_HISTORY_PROVIDER: where backfill and gap healing take 1-minute bars: simulated, twelvedata or alpaca (Finnhub's free tier has none). Empty (the default): the first provider of market_data_provider that has history. It may be outside the chain (Finnhub's stream, Alpaca's history); its keys are then needed too."
  type        = string
  default     = ""

  validation {
    condition     = contains(["", "simulated", "twelvedata", "alpaca"], var.history_provider)
    error_message = "history_provider must be empty (the chain's first with history), simulated, twelvedata or alpaca: finnhub has no history on its free tier."
  }
}

variable "calendar" {
  description = "Value of STOCKSTREAMER_CALENDAR: the exchange calendar that says when the market is open (an exchange-calendars name such as XNYS, XNAS, XLON or XTKS, or 24/7); the fetcher refuses to start with a name it does not know. Empty (the default): XNYS when the chain has a vendor, 24/7 for the simulator alone."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([A-Za-z0-9_]{2,16}|24/[57])?$", var.calendar))
    error_message = "calendar must be empty, 24/7, 24/5 or an exchange-calendars name such as XNYS."
  }
}

variable "extended_hours" {
  description = "Value of STOCKSTREAMER_EXTENDED_HOURS: count US exchanges' pre- and after-market hours (04:00-20:00 New York time) as open, for the live feed, healing and the dashboard."
  type        = bool
  default     = false
}

# One SSM SecureString parameter per vendor key, read on the instance at every start into the
# fetcher's key files; the instance may read exactly the ones its vendors need.
variable "finnhub_api_key_parameter" {
  description = "Name of the SSM SecureString parameter holding the Finnhub API key (needed when finnhub is in market_data_provider); empty for none."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(/?[A-Za-z0-9_.-]+)*$", var.finnhub_api_key_parameter))
    error_message = "finnhub_api_key_parameter must be an SSM parameter name (letters, digits, _ . - and /)."
  }
}

variable "twelvedata_api_key_parameter" {
  description = "Name of the SSM SecureString parameter holding the Twelve Data API key (needed when twelvedata is in market_data_provider or is history_provider); empty for none."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(/?[A-Za-z0-9_.-]+)*$", var.twelvedata_api_key_parameter))
    error_message = "twelvedata_api_key_parameter must be an SSM parameter name (letters, digits, _ . - and /)."
  }
}

variable "alpaca_api_key_id_parameter" {
  description = "Name of the SSM SecureString parameter holding the Alpaca API key ID (needed, with alpaca_api_secret_key_parameter, when alpaca is in market_data_provider or is history_provider); empty for none."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(/?[A-Za-z0-9_.-]+)*$", var.alpaca_api_key_id_parameter))
    error_message = "alpaca_api_key_id_parameter must be an SSM parameter name (letters, digits, _ . - and /)."
  }
}

variable "alpaca_api_secret_key_parameter" {
  description = "Name of the SSM SecureString parameter holding the Alpaca API secret key (with alpaca_api_key_id_parameter); empty for none."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(/?[A-Za-z0-9_.-]+)*$", var.alpaca_api_secret_key_parameter))
    error_message = "alpaca_api_secret_key_parameter must be an SSM parameter name (letters, digits, _ . - and /)."
  }
}

variable "provider_api_key_parameter" {
  description = "Deprecated, kept for configurations written before chains: the key parameter of a market_data_provider that names finnhub or twelvedata alone. Use finnhub_api_key_parameter or twelvedata_api_key_parameter; those win when both are set."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(/?[A-Za-z0-9_.-]+)*$", var.provider_api_key_parameter))
    error_message = "provider_api_key_parameter must be an SSM parameter name (letters, digits, _ . - and /)."
  }
}

variable "alert_channels_parameter" {
  description = "Name of an SSM SecureString parameter holding the alerts service's channels, a YAML mapping of name to Apprise URL (e.g. `phone: ntfys://ntfy.sh/my-topic`), read into secrets/alert-channels.yaml at every start; empty: the file on the instance as it is (none: only the built-in browser channel). The URLs hold credentials: they stay out of Terraform's state and the user data."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(/?[A-Za-z0-9_.-]+)*$", var.alert_channels_parameter))
    error_message = "alert_channels_parameter must be an SSM parameter name (letters, digits, _ . - and /)."
  }
}

variable "settings" {
  description = "Extra non-secret stockstreamer settings for the instance's .env, e.g. { STOCKSTREAMER_SYMBOLS = \"AAPL,MSFT\" }."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([
      for k, v in var.settings : can(regex("^[A-Z][A-Z0-9_]*$", k)) && !can(regex("(KEY|PASSWORD|SECRET|TOKEN|DATABASE_URL)", k)) && !can(regex("[\\n$]", v))
    ])
    error_message = "settings keys must be UPPER_CASE names of non-secret settings (secrets go through SSM), values one line without $."
  }

  # The market's settings have variables of their own: the vendors' keys and the instance's
  # permissions follow those.
  validation {
    condition     = length(setintersection(keys(var.settings), ["STOCKSTREAMER_PROVIDER", "STOCKSTREAMER_HISTORY_PROVIDER", "STOCKSTREAMER_CALENDAR", "STOCKSTREAMER_EXTENDED_HOURS"])) == 0
    error_message = "Set the provider chain, history provider, calendar and extended hours with market_data_provider, history_provider, calendar and extended_hours, not in settings."
  }

  # The instance's memory is sized for the replicas (see instance_type).
  validation {
    condition     = can(regex("^[1-9][0-9]?$", lookup(var.settings, "STOCKSTREAMER_API_REPLICAS", "1")))
    error_message = "settings.STOCKSTREAMER_API_REPLICAS must be a whole number from 1 to 99."
  }
}

################################################################################
# Optional: scale-out behind an Application Load Balancer
################################################################################

variable "api_instances" {
  description = "API instances. 1 (the default): one instance runs the whole stack behind Caddy, on its elastic IP. More: an Application Load Balancer (HTTPS with an ACM certificate for domain_name) in front of an Auto Scaling group of that many instances, each running the API and the dashboard; the existing instance keeps everything that must run once (the fetcher, the migrations and database users) and serves nothing. Needs use_rds = true and domain_name."
  type        = number
  default     = 1

  validation {
    condition     = var.api_instances >= 1 && floor(var.api_instances) == var.api_instances
    error_message = "api_instances must be a whole number, at least 1 (1: the single-instance deployment)."
  }
}

variable "api_instance_type" {
  description = "EC2 instance type of each API instance (api_instances > 1): its memory must hold the API's and the dashboard's limits plus 512 MiB for the system, checked at plan time. Graviton types get the arm64 image."
  type        = string
  default     = "t3.small"
}

variable "alb_subnet_ids" {
  description = "Public subnets (of the instance's VPC, in at least two availability zones) for the load balancer and the API instances (api_instances > 1). Empty (the default): two default subnets of the default VPC, the instance's among them, when subnet_id is unset; with subnet_id set, name them here. Each zone the load balancer spans holds a public IPv4 address, billed like any other."
  type        = list(string)
  default     = []
}

variable "alb_deletion_protection" {
  description = "Refuse to delete the load balancer (api_instances > 1); set false before `terraform destroy` or before going back to api_instances = 1."
  type        = bool
  default     = true
}

variable "alb_access_logs_bucket" {
  description = "S3 bucket for the load balancer's access logs (api_instances > 1), whose bucket policy lets Elastic Load Balancing write to it; empty (the default): no access logs."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])?$", var.alb_access_logs_bucket))
    error_message = "alb_access_logs_bucket must be an S3 bucket name (3-63 lowercase letters, digits, dots and hyphens), or empty."
  }
}

################################################################################
# Optional: Prometheus and Grafana
################################################################################

variable "observability" {
  description = "Run Prometheus, postgres_exporter and Grafana (compose profile `observability`) on the instance. With domain_name, Caddy also serves Grafana under /grafana/ on the HTTPS site, behind Grafana's own login; without one, Grafana stays on the instance's loopback (output grafana_tunnel_command). Prometheus is never public. Not with use_rds (the exporter watches the container database)."
  type        = bool
  default     = false
}

################################################################################
# Optional: Amazon RDS for PostgreSQL
################################################################################

variable "use_rds" {
  description = "Put the database on Amazon RDS for PostgreSQL instead of the postgres container."
  type        = bool
  default     = false
}

variable "rds_instance_class" {
  description = "RDS instance class (use_rds only)."
  type        = string
  default     = "db.t4g.micro"
}

variable "rds_engine_version" {
  description = "PostgreSQL major version on RDS (use_rds only)."
  type        = string
  default     = "17"
}

variable "rds_allocated_storage" {
  description = "RDS storage in GiB (use_rds only)."
  type        = number
  default     = 20
}

variable "rds_backup_retention_days" {
  description = "Days of automated RDS backups (use_rds only)."
  type        = number
  default     = 7

  validation {
    condition     = var.rds_backup_retention_days >= 1 && var.rds_backup_retention_days <= 35
    error_message = "rds_backup_retention_days must be 1-35: backups stay on."
  }
}

variable "rds_deletion_protection" {
  description = "Refuse to delete the RDS instance; set false before `terraform destroy`."
  type        = bool
  default     = true
}
