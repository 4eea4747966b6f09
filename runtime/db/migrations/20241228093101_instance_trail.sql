-- migrate:up
-- The audit trail the hourly exporter uploads (original migration of the same version).
-- Timestamps are UTC wall-clock (TIMESTAMP without zone), as the original stored them.
CREATE TABLE IF NOT EXISTS deployment_audit (
    deployment_id TEXT PRIMARY KEY,
    validator TEXT NOT NULL,
    instance_id TEXT,
    chute_id TEXT NOT NULL,
    version TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT (NOW() AT TIME ZONE 'UTC'),
    verified_at TIMESTAMP,
    deleted_at TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_deployment_audit_verified_deleted ON deployment_audit (verified_at, deleted_at);

CREATE OR REPLACE FUNCTION fn_deployment_audit_insert() RETURNS TRIGGER AS $$
BEGIN
    INSERT INTO deployment_audit (deployment_id, validator, instance_id, chute_id, version)
    VALUES (NEW.deployment_id, NEW.validator, NEW.instance_id, NEW.chute_id, NEW.version)
    ON CONFLICT (deployment_id) DO NOTHING;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION fn_deployment_audit_verified() RETURNS TRIGGER AS $$
BEGIN
    IF OLD.verified_at IS NULL AND NEW.verified_at IS NOT NULL THEN
        UPDATE deployment_audit
           SET verified_at = NEW.verified_at AT TIME ZONE 'UTC', instance_id = NEW.instance_id
         WHERE deployment_id = NEW.deployment_id;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION fn_deployment_audit_deleted() RETURNS TRIGGER AS $$
BEGIN
    UPDATE deployment_audit SET deleted_at = NOW() AT TIME ZONE 'UTC' WHERE deployment_id = OLD.deployment_id;
    RETURN OLD;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS tr_deployment_audit_insert ON deployments;
CREATE TRIGGER tr_deployment_audit_insert AFTER INSERT ON deployments
    FOR EACH ROW EXECUTE FUNCTION fn_deployment_audit_insert();
DROP TRIGGER IF EXISTS tr_deployment_audit_verified ON deployments;
CREATE TRIGGER tr_deployment_audit_verified AFTER UPDATE ON deployments
    FOR EACH ROW EXECUTE FUNCTION fn_deployment_audit_verified();
DROP TRIGGER IF EXISTS tr_deployment_audit_deleted ON deployments;
CREATE TRIGGER tr_deployment_audit_deleted BEFORE DELETE ON deployments
    FOR EACH ROW EXECUTE FUNCTION fn_deployment_audit_deleted();

-- migrate:down
DROP TRIGGER IF EXISTS tr_deployment_audit_deleted ON deployments;
DROP TRIGGER IF EXISTS tr_deployment_audit_verified ON deployments;
DROP TRIGGER IF EXISTS tr_deployment_audit_insert ON deployments;
DROP FUNCTION IF EXISTS fn_deployment_audit_deleted();
DROP FUNCTION IF EXISTS fn_deployment_audit_verified();
DROP FUNCTION IF EXISTS fn_deployment_audit_insert();
DROP TABLE IF EXISTS deployment_audit;
