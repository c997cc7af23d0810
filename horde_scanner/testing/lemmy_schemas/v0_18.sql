-- Lemmy 0.18: no table records uploads (no image migration before 0.19.0).
\i common_0_19.sql
