"""What this machine can run: the device, a number format verified to work here, and what fits in memory."""
