"""The integrations service: a person's connected accounts at Google and Microsoft (`athena.connections.v1`),
whose tokens never leave it."""
