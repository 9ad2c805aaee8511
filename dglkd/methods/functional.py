"""Loss functions shared by several methods (pure torch, device-agnostic)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Hinton's KD term: KL(softmax(t/T) ‖ softmax(s/T)) · T², averaged over instances."""
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return kl.mean() * temperature**2
