"""In-memory fakes of the billing domain's collaborators, for tests that run with the network off."""
