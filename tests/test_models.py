import pytest
import torch
import torch.nn.functional as F

from imgclf.core.errors import ImgclfError
from imgclf.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from imgclf.models import MODELS, count_parameters, create_model

# Reference sizes: the study's Keras models (simple_cnn, vgg10), He et al. 2016, Table 6 (ResNets), and airbench94's
# network (its legacy/airbench94.py, counted: 1,972,792).
REFERENCE_PARAMS = {"simple_cnn": 316e3, "vgg10": 403e3, "resnet20": 0.27e6, "resnet56": 0.85e6, "resnet110": 1.7e6}
REFERENCE_PARAMS["speed94"] = 1_972_792


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_count_matches_reference(name):
    params = count_parameters(create_model(name))
    assert abs(params / REFERENCE_PARAMS[name] - 1) <= 0.05, params


@pytest.mark.parametrize("name", list(MODELS))
def test_output_shape(name):
    model = create_model(name, num_classes=7).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ImgclfError, match=r"unknown model 'resnet21'.*resnet20"):
        create_model("resnet21")


@pytest.mark.parametrize("name", list(MODELS))
def test_model_learns_a_small_slice(name, cifar_train):
    torch.manual_seed(0)
    images = cifar_train.images[:32].float() / 255
    images = (images - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    labels = cifar_train.labels[:32]
    model = create_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
