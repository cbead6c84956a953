-- A trainer batch's block of `gradients` or `events` rows (up to ~32 MiB) is written as a
-- compact part (one data file for every column) rather than a wide one (two files per
-- column), so fewer inodes for the kernel to allocate: 4-20 % less CPU for those inserts in
-- the runs measured (issue 18's fourth wave, docs/design-decisions.md). Parts that merges
-- make past 128 MiB are wide as before; reads are the same rows either way.
ALTER TABLE gradients MODIFY SETTING min_bytes_for_wide_part = 134217728;
ALTER TABLE events MODIFY SETTING min_bytes_for_wide_part = 134217728;
