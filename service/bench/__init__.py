"""`buddycast bench`: the load generator and benchmark."""
