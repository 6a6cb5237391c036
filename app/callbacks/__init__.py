"""Call-backs: the agent returns a caller's message by phone, inside the callee's calling hours.

`rules` says when a number may be called (pure); `store` keeps each call-back and the do-not-call
list in the records store; `dialer` places the calls that are due (one replica each, by a lease);
`routes` are the answered call's TwiML, its voicemail and Twilio's status callbacks.
"""
