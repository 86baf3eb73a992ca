"""The webhooks service: provider notifications (Microsoft Graph, Google Calendar and Drive channels, Google
Health API) verified as each provider documents, then published to the event bus (`mesh.events`)."""
