-- Demo data for local development and tests (DESIGN §10). Loaded on a new local database only.
-- The festival tables arrive with the ledger migration; until then there is nothing to seed.
select 1;
