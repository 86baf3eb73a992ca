-- depends: memory_0003_encryption
DROP TABLE push_subscriptions, notification_settings, notifications;
