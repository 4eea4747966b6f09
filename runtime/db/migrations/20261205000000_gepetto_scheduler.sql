-- migrate:up
-- What Gepetto's scheduler needs beyond the original schema (the successor's
-- 20251002084007_preemptible_flag and 20251003010735_deploy_activated_at, plus lookups
-- the event handlers make on every instance event).
ALTER TABLE chutes ADD COLUMN IF NOT EXISTS preemptible BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE deployments ADD COLUMN IF NOT EXISTS preemptible BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE deployments ADD COLUMN IF NOT EXISTS activated_at TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS idx_deployments_config ON deployments (config_id);
CREATE INDEX IF NOT EXISTS idx_deployments_instance ON deployments (instance_id);
CREATE INDEX IF NOT EXISTS idx_deployments_job ON deployments (job_id);
CREATE INDEX IF NOT EXISTS idx_deployments_chute ON deployments (chute_id);

-- migrate:down
DROP INDEX IF EXISTS idx_deployments_chute;
DROP INDEX IF EXISTS idx_deployments_job;
DROP INDEX IF EXISTS idx_deployments_instance;
DROP INDEX IF EXISTS idx_deployments_config;
ALTER TABLE deployments DROP COLUMN IF EXISTS activated_at;
ALTER TABLE deployments DROP COLUMN IF EXISTS preemptible;
ALTER TABLE chutes DROP COLUMN IF EXISTS preemptible;
