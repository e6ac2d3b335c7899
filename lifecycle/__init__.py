"""An account's whole life outside of everyday use: backups (made, scheduled, kept, pruned),
restores (same account, new account, another database), and the registry of what was made.

Public-schema app: the backup registry outlives the account's schema.
"""
