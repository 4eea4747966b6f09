-- migrate:up
-- The tables the original created with SQLAlchemy's create_all before running dbmate,
-- in their final shape. IF NOT EXISTS keeps this a no-op on a database the Python miner
-- already created, so an operator can point this runtime at it.
CREATE TABLE IF NOT EXISTS servers (
    server_id TEXT PRIMARY KEY,
    validator TEXT NOT NULL,
    name TEXT NOT NULL UNIQUE,
    ip_address TEXT,
    verification_port INTEGER,
    status TEXT,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    labels JSONB NOT NULL,
    seed BIGINT,
    gpu_count INTEGER NOT NULL,
    cpu_per_gpu INTEGER NOT NULL DEFAULT 1,
    memory_per_gpu INTEGER NOT NULL DEFAULT 1,
    hourly_cost DOUBLE PRECISION NOT NULL,
    locked BOOLEAN DEFAULT FALSE
);

CREATE TABLE IF NOT EXISTS chutes (
    chute_id TEXT PRIMARY KEY,
    validator TEXT NOT NULL,
    name TEXT,
    image TEXT NOT NULL,
    code TEXT NOT NULL,
    filename TEXT NOT NULL,
    ref_str TEXT NOT NULL,
    version TEXT NOT NULL,
    supported_gpus TEXT[] NOT NULL,
    gpu_count INTEGER NOT NULL,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW(),
    ban_reason TEXT,
    chutes_version TEXT
);

CREATE TABLE IF NOT EXISTS deployments (
    deployment_id TEXT PRIMARY KEY,
    instance_id TEXT,
    validator TEXT NOT NULL,
    host TEXT,
    port INTEGER,
    chute_id TEXT NOT NULL REFERENCES chutes (chute_id) ON DELETE CASCADE,
    server_id TEXT NOT NULL REFERENCES servers (server_id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    active BOOLEAN DEFAULT FALSE,
    verified_at TIMESTAMPTZ,
    stub BOOLEAN DEFAULT FALSE,
    job_id TEXT,
    config_id TEXT,
    created_at TIMESTAMPTZ DEFAULT NOW()
);

CREATE TABLE IF NOT EXISTS gpus (
    gpu_id TEXT PRIMARY KEY,
    validator TEXT,
    server_id TEXT NOT NULL REFERENCES servers (server_id) ON DELETE CASCADE,
    deployment_id TEXT REFERENCES deployments (deployment_id) ON DELETE SET NULL,
    device_info JSONB NOT NULL,
    model_short_ref TEXT NOT NULL,
    verified BOOLEAN DEFAULT FALSE
);

-- migrate:down
DROP TABLE IF EXISTS gpus;
DROP TABLE IF EXISTS deployments;
DROP TABLE IF EXISTS chutes;
DROP TABLE IF EXISTS servers;
