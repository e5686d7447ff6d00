-- The data of the agent examples (examples/data/agents.db is built from this file:
--   sqlite3 examples/data/agents.db < examples/data/agents.sql).
CREATE TABLE emails(id INTEGER PRIMARY KEY, sender TEXT, subject TEXT, body TEXT);
INSERT INTO emails(sender, subject, body) VALUES
  ('ann@example.com', 'Refund for a damaged kettle', 'My kettle (order 1001) arrived with a cracked lid. I would like a refund, please.'),
  ('bob@example.com', 'Where is my order?', 'I ordered a teapot a week ago (order 1002) and it has not arrived yet. Can you check?'),
  ('promo@cheap.example', 'Win a free cruise', 'Click here to claim your prize before midnight!!!');

CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, item TEXT, status TEXT, eta TEXT);
INSERT INTO orders(id, customer, item, status, eta) VALUES
  (1001, 'ann@example.com', 'kettle', 'delivered', NULL),
  (1002, 'bob@example.com', 'teapot', 'in transit', '2026-12-09'),
  (1003, 'ann@example.com', 'mugs (4)', 'processing', '2026-12-12');

CREATE TABLE pages(id INTEGER PRIMARY KEY, path TEXT, title TEXT, tags TEXT);
INSERT INTO pages(path, title, tags) VALUES
  ('pages/journaling.md', 'Why journal every step', 'durable execution, replay'),
  ('pages/idempotency.md', 'Idempotency keys for side effects', 'durable execution, effects'),
  ('pages/sagas.md', 'Compensating what cannot be rolled back', 'durable execution, sagas'),
  ('pages/teapots.md', 'A short history of teapots', 'tea');

CREATE TABLE vendors(name TEXT PRIMARY KEY, country TEXT, bank_verified INTEGER, tax_id TEXT);
INSERT INTO vendors VALUES
  ('Acme Tools Ltd', 'GB', 1, 'GB123456789'),
  ('Shady Supplies', 'XX', 0, NULL);
