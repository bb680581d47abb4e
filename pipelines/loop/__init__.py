"""Closing the loop: simulated traffic on the service (``traffic``), served logs as a day (``served``), the whole loop (``closed_loop``), scenarios."""
