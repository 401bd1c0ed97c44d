-- Device ids are IMEIs and other identifiers, compared byte for byte: under the database's
-- default collation (often en_US.UTF-8 or C.UTF-8, which PostgreSQL before 17 sorts through
-- the C library's strcoll) every B-tree comparison on the hottest keys went through strcoll,
-- a visible share of the server's time per inserted position (docs/performance.md). "C"
-- compares with memcmp. The order of digit strings does not change.
-- Rewrites the two tables and their primary keys once.
ALTER TABLE positions ALTER COLUMN device_id TYPE TEXT COLLATE "C";
ALTER TABLE device_state ALTER COLUMN device_id TYPE TEXT COLLATE "C";
