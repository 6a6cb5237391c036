"""The phone side: Twilio's webhook and media stream, the relay to ElevenLabs, and actions on live calls."""
