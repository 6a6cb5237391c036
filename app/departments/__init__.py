"""Departments: where a transfer can go, what each handles, and when someone is there.

`schedule` answers "open now?" and "when does it open?" (pure, given a time), `config` reads and
checks `departments.toml`, `directory` keeps the running server's departments current, and
`spoken` says it all in words for the model and the caller.
"""
