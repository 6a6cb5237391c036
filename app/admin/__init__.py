"""The review page /admin: calls, a call's turns, knowledge gaps, messages and an overview."""
