"""AWS adapters of the billing domain: the DynamoDB single table and the EventBridge schedules."""
