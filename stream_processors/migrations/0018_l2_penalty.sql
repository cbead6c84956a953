-- The L2 penalty λ recorded with a model version (ModelVersionRecorded.l2_penalty, sum form
-- Σ ℓ_i + (λ/2)|θ|²): attribution's default influence damping for that version
-- (docs/attribution.md, "Damping"). 0: none recorded (rows stored before this migration).
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS l2_penalty Float64 DEFAULT 0
