-- Scaling out: work is split into partitions by a hash of the ordering key (see
-- `keel_actors::cluster::partition_of`); each partition's processing and routing run on the
-- one node that holds its lease.

-- The partition of a stored request (the gateway writes one row per request and partition)
-- and of a delivery job. Rows written before this migration belong to partition 0; the
-- processor computes the partition of their jobs from each event's key.
-- Readers scan the primary key (id order) and skip other partitions' rows: no extra index
-- to maintain on the ingest path.
ALTER TABLE gw_jobs ADD COLUMN partition integer NOT NULL DEFAULT 0;
ALTER TABLE rt_jobs ADD COLUMN partition integer NOT NULL DEFAULT 0;
ALTER TABLE dlq_jobs ADD COLUMN partition integer NOT NULL DEFAULT 0;

-- The partition count this database was set up with: every node must use the same one,
-- and it cannot change while data is in flight.
CREATE TABLE cluster_settings (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    partitions integer     NOT NULL CHECK (partitions > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Nodes announce themselves on every heartbeat; a node is live while `last_seen` is
-- younger than the lease TTL.
CREATE TABLE nodes (
    node_id    text        COLLATE "C" PRIMARY KEY,
    addr       text        NOT NULL,
    role       text        NOT NULL CHECK (role IN ('worker', 'gateway')),
    started_at timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL
);

-- One lease per partition. `epoch` grows with every acquisition (a fencing token); a lease
-- is free when `owner` is null or `expires_at` has passed.
CREATE TABLE leases (
    partition   integer     PRIMARY KEY,
    owner       text        COLLATE "C",
    epoch       bigint      NOT NULL DEFAULT 0,
    acquired_at timestamptz,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity'
);

-- Every tenure of every lease, for `keel status` and for checking that no partition was
-- ever held by two nodes at once. `ended_at` is the release, or the last expiry renewed
-- while the owner lived (a crashed owner's tenure ends when its lease expires).
CREATE TABLE lease_history (
    partition   integer     NOT NULL,
    epoch       bigint      NOT NULL,
    owner       text        COLLATE "C" NOT NULL,
    acquired_at timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL,
    released    boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (partition, epoch)
);
