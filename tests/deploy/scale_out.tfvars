# The scale-out half of the configuration for checkov: a load balancer in front of API instances.
repository_url = "https://git.example.com/stockstreamer.git"
use_rds        = true
api_instances  = 3
domain_name    = "stocks.example.com"
ssh_cidrs      = ["203.0.113.0/24"]
