"""What a live call shares between the bridge that carries it and the brain that talks on it."""
