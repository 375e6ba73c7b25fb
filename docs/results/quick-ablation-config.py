from configs import test as test_config

def get_config():
  c = test_config.get_config()
  c.data.synthetic.output_dir = "runs/quick-ablation-data"
  c.train.num_steps = 60
  c.train.eval_every = 30
  c.train.checkpoint_every = 30
  c.ablation.label_modes = ("one-segment", "two-segment")
  c.ablation.num_seeds = 3
  return c
