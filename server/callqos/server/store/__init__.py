"""Persistence behind one narrow interface (`base.Store`); SQLite now (`sqlite`)."""
