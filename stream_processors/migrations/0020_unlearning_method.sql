-- Which unlearning method ran and why, and what it cost (docs/unlearning.md, "Auto"):
-- UnlearningApplied.method_reason, the replay's estimate before it ran and the steps it
-- replayed, the checkpoint it restored, the approximate methods' step counts, and the
-- membership-inference AUC of the model before. Rows stored before this migration have
-- the defaults ('' and 0; membership_auc_before NaN: not measured).
ALTER TABLE unlearning_applied ADD COLUMN IF NOT EXISTS method_reason String DEFAULT '';
ALTER TABLE unlearning_applied ADD COLUMN IF NOT EXISTS estimated_replay_steps UInt64 DEFAULT 0;
ALTER TABLE unlearning_applied ADD COLUMN IF NOT EXISTS estimated_replay_seconds Float64 DEFAULT 0;
ALTER TABLE unlearning_applied ADD COLUMN IF NOT EXISTS steps_replayed UInt64 DEFAULT 0;
ALTER TABLE unlearning_applied ADD COLUMN IF NOT EXISTS checkpoint_uri String DEFAULT '';
ALTER TABLE unlearning_applied ADD COLUMN IF NOT EXISTS newton_steps UInt32 DEFAULT 0;
ALTER TABLE unlearning_applied ADD COLUMN IF NOT EXISTS fine_tune_steps UInt32 DEFAULT 0;
ALTER TABLE unlearning_applied ADD COLUMN IF NOT EXISTS membership_auc_before Float64 DEFAULT nan
