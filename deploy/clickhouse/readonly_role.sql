-- A read-only role for auditors on a ClickHouse server deployment (docs/compliance.md).
-- Run once as an administrator:  clickhouse-client --multiquery < readonly_role.sql
-- (for a database other than `headwater` (HEADWATER_DATABASE), edit the GRANT).
-- Then give an auditor a login of their own, for example:
--   CREATE USER auditor IDENTIFIED WITH sha256_password BY '...'
--       DEFAULT ROLE headwater_auditor SETTINGS PROFILE 'headwater_readonly';
-- chDB (embedded mode) has no access control: there `headwater sql` and serve's Query.Sql
-- run every statement with readonly=1 instead.
CREATE ROLE IF NOT EXISTS headwater_auditor;
CREATE SETTINGS PROFILE IF NOT EXISTS headwater_readonly SETTINGS readonly = 1 TO headwater_auditor;
GRANT SELECT ON headwater.* TO headwater_auditor;
