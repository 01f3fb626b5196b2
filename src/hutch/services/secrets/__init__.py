"""Project secrets: envelope encryption under a key-encryption key from a provider."""
