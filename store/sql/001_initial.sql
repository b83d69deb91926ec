-- The durable record, written behind the hot path from the Redis event streams.
-- Every row carries `rev`, the entity's revision in Redis: upserts only move it forward, so
-- replaying any event (or the whole stream) changes no row.
-- Times are exact to the millisecond (the Redis scripts' clock).

CREATE TABLE carts (
    cart_id      text        PRIMARY KEY,
    user_id      text        NOT NULL,
    currency     char(3)     NOT NULL,
    status       text        NOT NULL CHECK (status IN ('ACTIVE', 'CHECKOUT', 'CONVERTED', 'EXPIRED')),
    items        jsonb       NOT NULL,
    total_amount bigint      NOT NULL CHECK (total_amount >= 0),
    version      integer     NOT NULL CHECK (version > 0),
    txnid        text,
    rev          integer     NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);

CREATE TABLE payments (
    txnid               text        PRIMARY KEY,
    cart_id             text        NOT NULL,
    user_id             text        NOT NULL,
    provider            text        NOT NULL,
    amount              bigint      NOT NULL CHECK (amount > 0),
    currency            char(3)     NOT NULL,
    status              text        NOT NULL CHECK (status IN ('INITIATED', 'SUCCESS', 'FAILED')),
    cart_version        integer     NOT NULL,
    provider_ref        text,
    provider_payment_id text,
    booking_id          text,
    refund_required     boolean     NOT NULL,
    reason              text,
    rev                 integer     NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);
CREATE INDEX payments_cart_id ON payments (cart_id);
CREATE INDEX payments_refund_required ON payments (created_at) WHERE refund_required;

-- One booking per cart, whatever happens: cart_id is unique.
CREATE TABLE bookings (
    booking_id text        PRIMARY KEY,
    cart_id    text        NOT NULL UNIQUE,
    txnid      text        NOT NULL UNIQUE,
    user_id    text        NOT NULL,
    status     text        NOT NULL CHECK (status IN ('CONFIRMED')),
    items      jsonb       NOT NULL,
    amount     bigint      NOT NULL CHECK (amount > 0),
    currency   char(3)     NOT NULL,
    created_at timestamptz NOT NULL
);
