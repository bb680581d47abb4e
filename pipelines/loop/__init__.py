"""Closing the loop: simulated traffic on the service, served logs as a day, the whole loop, scenarios."""
