-- depends: integrations_0002_uploads_health
DROP TABLE IF EXISTS integrations.subscriptions;
