"""Account schemas: which one a request, job or command works in, and making and dropping them.

`switch(user_or_account)` is the one way code outside a request enters an account's schema.
"""

from tenancy.context import NoTenantError, current_account, switch

__all__ = ["NoTenantError", "current_account", "switch"]
