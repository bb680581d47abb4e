"""The workspace's HTML report."""
