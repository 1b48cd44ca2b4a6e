"""Tag names shared by the launcher, the training asset and the reaper sensor."""

# a run tag asking for a GPU whatever the run materialises; the training asset carries it too
GPU = "receipt_pipeline/gpu"
# run tags overriding the launcher's instance type list and market for one run
INSTANCE_TYPE = "receipt_pipeline/instance_type"
MARKET = "receipt_pipeline/market"
# run tags the launcher records
INSTANCE_ID = "ec2/instance_id"
RECORDED_INSTANCE_TYPE = "ec2/instance_type"
RECORDED_MARKET = "ec2/market"
ZONE = "ec2/availability_zone"
HOURLY_PRICE = "ec2/hourly_price_usd"
LAUNCH_TIME = "ec2/launch_time"
# the EC2 tag naming an instance's run: how the reaper sensor finds instances whose run has ended
INSTANCE_RUN_ID = "dagster-run-id"
# the EC2 tag naming the deployment (the launcher's `deployment`) whose launcher started an instance: a
# deployment's reaper ends only its own, so staging and prod can share an account
INSTANCE_DEPLOYMENT = "receipt-pipeline-deployment"
