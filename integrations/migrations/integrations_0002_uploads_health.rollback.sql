-- depends: integrations_0001_connections
DROP TABLE IF EXISTS integrations.health_days;
DROP TABLE IF EXISTS integrations.uploads;
