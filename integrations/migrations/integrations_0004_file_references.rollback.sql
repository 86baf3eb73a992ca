-- depends: integrations_0003_subscriptions
DROP TABLE IF EXISTS integrations.file_references;
