-- migrate:up
-- A GPU can only be allocated to a deployment on its own server. gpus.deployment_id is a
-- single column, so a GPU belongs to at most one deployment; this composite key adds that the
-- deployment runs on the server the GPU is in (the original only checked this in Python).
ALTER TABLE deployments DROP CONSTRAINT IF EXISTS deployments_id_server_key;
ALTER TABLE deployments ADD CONSTRAINT deployments_id_server_key UNIQUE (deployment_id, server_id);
ALTER TABLE gpus DROP CONSTRAINT IF EXISTS gpus_deployment_same_server_fkey;
ALTER TABLE gpus ADD CONSTRAINT gpus_deployment_same_server_fkey
    FOREIGN KEY (deployment_id, server_id) REFERENCES deployments (deployment_id, server_id)
    ON DELETE SET NULL (deployment_id);
CREATE INDEX IF NOT EXISTS idx_gpus_deployment ON gpus (deployment_id);
CREATE INDEX IF NOT EXISTS idx_deployments_server ON deployments (server_id);

-- migrate:down
DROP INDEX IF EXISTS idx_deployments_server;
DROP INDEX IF EXISTS idx_gpus_deployment;
ALTER TABLE gpus DROP CONSTRAINT IF EXISTS gpus_deployment_same_server_fkey;
ALTER TABLE deployments DROP CONSTRAINT IF EXISTS deployments_id_server_key;
