# The other half of the configuration for checkov: RDS, a vendor key and an SSH range.
repository_url             = "https://git.example.com/stockstreamer.git"
use_rds                    = true
market_data_provider       = "finnhub"
provider_api_key_parameter = "/stockstreamer/finnhub-api-key"
ssh_cidrs                  = ["203.0.113.0/24"]
domain_name                = "stocks.example.com"
