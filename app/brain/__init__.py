"""The brain: ElevenLabs' Speech Engine dials /ws; each caller turn is sanitised, looked up and answered."""
