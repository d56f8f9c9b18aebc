"""seqenv: sequence generation as a Gymnasium MDP whose actions include backspace.

Importing the package registers ``SeqGen-v0`` (single env
:class:`seqenv.env.SeqGenEnv`; vector env :class:`seqenv.vector_env.SeqGenVectorEnv`
as its ``vector_entry_point``)::

    import gymnasium as gym
    import seqenv

    env = gym.make("SeqGen-v0", task="python-lines")
    venv = gym.make_vec("SeqGen-v0", num_envs=1024, device="cpu")
"""

from gymnasium.envs.registration import register, registry

from .env import SeqGenEnv
from .tasks import DEFAULT_TASK, Task, list_tasks, make_task
from .tokenizers import (
    BACKSPACE_ID,
    BOS_ID,
    EOS_ID,
    NUM_SPECIAL,
    PAD_ID,
    UNK_ID,
    BPETokenizer,
    CharTokenizer,
    SpecialIds,
    Tokenizer,
    apply_backspaces,
    tokenizer_from_dict,
)
from .vector_env import SeqGenVectorEnv

__version__ = "0.1.0"

if "SeqGen-v0" not in registry:
    register(
        id="SeqGen-v0",
        entry_point="seqenv.env:SeqGenEnv",
        vector_entry_point="seqenv.vector_env:SeqGenVectorEnv",
    )

__all__ = [
    "BACKSPACE_ID",
    "BOS_ID",
    "EOS_ID",
    "NUM_SPECIAL",
    "PAD_ID",
    "UNK_ID",
    "BPETokenizer",
    "CharTokenizer",
    "SpecialIds",
    "Tokenizer",
    "apply_backspaces",
    "tokenizer_from_dict",
    "DEFAULT_TASK",
    "Task",
    "list_tasks",
    "make_task",
    "SeqGenEnv",
    "SeqGenVectorEnv",
]
