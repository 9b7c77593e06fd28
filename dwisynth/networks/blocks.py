"""Building blocks shared by the synthesis networks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W (bottom, right) up to a multiple of `multiple`; returns the padded tensor and the old (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=value)
    return x, (h, w)


def to_network(x: torch.Tensor, intensity_max: float) -> torch.Tensor:
    """S/S0 intensities (0..intensity_max) -> the tanh range [-1, 1] the generators produce.

    A square-root scale: fluid can be 20x brighter than tissue (the bladder), and on a
    linear scale tissue would be squeezed into a few percent of the range, where a
    generator that outputs a constant already has a small loss.
    """
    return 2.0 * torch.sqrt(torch.clamp(x, 0.0, intensity_max) / intensity_max) - 1.0


def from_network(t: torch.Tensor, intensity_max: float) -> torch.Tensor:
    """Inverse of `to_network`."""
    return intensity_max * ((torch.clamp(t, -1.0, 1.0) + 1.0) * 0.5) ** 2


NORMS = ("instance", "none")


def norm_layer(norm: str, channels: int) -> nn.Module:
    """Instance norm (the published designs) or none.

    Our inputs are S/S0-normalized, so absolute intensity carries the diffusion
    information; instance norm removes each slice's feature statistics and with them
    part of that information (on the demo it cost several dB of PSNR).
    """
    if norm == "instance":
        return nn.InstanceNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")


ACTIVATIONS = ("relu", "leaky")


def activation_layer(kind: str) -> nn.Module:
    """ReLU (the published generators) or LeakyReLU(0.2), whose units cannot die: without normalization one
    bad step can push a ReLU layer negative everywhere, and no gradient ever brings it back."""
    if kind not in ACTIVATIONS:
        raise ValueError(f"activation {kind!r}: choose from {', '.join(ACTIVATIONS)}")
    return nn.ReLU(True) if kind == "relu" else nn.LeakyReLU(0.2, True)


class ResidualBlock(nn.Module):
    """Reflect-padded 3x3 conv, norm, activation (ReLU), twice, plus the identity (CycleGAN's block)."""

    def __init__(self, channels: int, norm: str = "instance", activation: str = "relu"):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm_layer(norm, channels),
            activation_layer(activation),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


UPSAMPLING = ("bilinear", "resize", "transposed")


class AlignedUpsample(nn.Module):
    """x2 upsampling that puts low-resolution pixel i back on full-resolution pixel 2i, where the encoders'
    stride-2 convolutions (kernel 3, padding 1) centred it: bilinear between neighbours, the last row and column
    repeated. A nearest-neighbour resize puts it at 2i + 0.5, so every level shifted the decoder's content half a
    pixel down and right (1.4-1.5 px through DC²Anet's two levels, measured on an impulse): a lesion of 2-3
    voxels drawn beside itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        up = F.interpolate(x, size=(2 * h - 1, 2 * w - 1), mode="bilinear", align_corners=True)
        return F.pad(up, (0, 1, 0, 1), mode="replicate")


def upsample_layer(in_channels: int, out_channels: int, mode: str = "bilinear") -> nn.Module:
    """x2 upsampling. bilinear: `AlignedUpsample`, then a reflect-padded 3x3 conv (no checkerboard, no shift).
    resize: a nearest-neighbour resize, then the same conv (Odena et al. 2016: no checkerboard, but content
    shifted half a pixel per level; kept for model files that used it). transposed: a stride-2 transposed conv,
    whose uneven kernel overlap leaves the checkerboard the DC²Anet report showed."""
    if mode == "bilinear":
        return nn.Sequential(AlignedUpsample(), nn.ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, 3))
    if mode == "resize":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                             nn.Conv2d(in_channels, out_channels, 3))
    if mode == "transposed":
        return nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
    raise ValueError(f"upsampling must be one of {UPSAMPLING}, not {mode!r}")


LOG_RATIO_GAIN = 5.0  # ln(S_b / S_first) of tissue between b 0 and 100 is -0.05 to -0.3: brought near unit size
LOG_RATIO_LIMIT = 3.0  # background (t = -1 in both) and noise: bounded, never log(0)


def signal_log_ratios(x: torch.Tensor) -> torch.Tensor:
    """ln(S_c / S_0) of every channel c > 0 against the first, from network-scale images (t = 2 sqrt(S / imax) - 1,
    so S ∝ (t + 1)²), scaled and clipped: (N, C, H, W) -> (N, C - 1, H, W). A ReLU network computes a ratio of
    its inputs only approximately; the decay between the input b-values is what tells a restricted-diffusion
    lesion (bright at b 0, still bright at b 100) from fluid (bright at b 0, falling fast)."""
    log_u = torch.log(torch.clamp(x.float() + 1.0, min=1e-3))
    ratios = 2.0 * (log_u[:, 1:] - log_u[:, :1]) * LOG_RATIO_GAIN
    return torch.clamp(ratios, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT).to(x.dtype)


class ResnetGenerator(nn.Module):
    """Image-to-image ResNet generator (Johnson et al.; the DC²Anet generator).

    7x7 conv ngf -> two stride-2 convs (2ngf, 4ngf) -> n_blocks residual blocks ->
    two x2 upsamplings (`upsample_layer`) -> 7x7 conv -> tanh. (N, in_channels, H, W) ->
    (N, out_channels, H, W); H and W must be multiples of 4.

    skips: add the encoder's full- and half-resolution features to the decoder's (LinkNet-style additive
    skips, no extra weights). Without them every detail must pass the quarter-resolution bottleneck: on the
    demo a small liver metastasis and the brain's cortex were the last things learned.
    """

    def __init__(self, in_channels: int, out_channels: int, ngf: int = 64, n_blocks: int = 6,
                 norm: str = "instance", upsample: str = "resize", skips: bool = False, log_ratios: bool = False):
        super().__init__()
        self.log_ratios = log_ratios and in_channels > 1
        first = in_channels + (in_channels - 1 if self.log_ratios else 0)
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(first, ngf, 7), norm_layer(norm, ngf), nn.ReLU(True)]
        self._taps = [len(layers) - 1]  # full-resolution encoder features
        for mult in (1, 2):
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1),
                       norm_layer(norm, ngf * mult * 2), nn.ReLU(True)]
            if mult == 1:
                self._taps.append(len(layers) - 1)  # half resolution
        layers += [ResidualBlock(ngf * 4, norm) for _ in range(n_blocks)]
        self._joins = []
        for mult in (4, 2):
            layers += [upsample_layer(ngf * mult, ngf * mult // 2, upsample), norm_layer(norm, ngf * mult // 2),
                       nn.ReLU(True)]
            self._joins.insert(0, len(layers) - 1)  # where the decoder is back at half, then full resolution
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)  # one Sequential: the same weights' names with or without skips
        self.skips = skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log_ratios:
            x = torch.cat([x, signal_log_ratios(x)], 1)
        if not self.skips:
            return self.model(x)
        features = {}
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in self._taps:
                features[self._joins[self._taps.index(i)]] = x
            elif i in features:
                x = x + features.pop(i)
        return x


def patch_discriminator(in_channels: int, out_channels: int, ndf: int = 64, n_layers: int = 3) -> nn.Module:
    """70x70 PatchGAN (MONAI), instance norm; returns logit maps (N, out_channels, h, w)."""
    from monai.networks.nets import PatchDiscriminator

    return _LastOutput(PatchDiscriminator(spatial_dims=2, channels=ndf, in_channels=in_channels,
                                          out_channels=out_channels, num_layers_d=n_layers, norm="INSTANCE"))


class _LastOutput(nn.Module):
    """MONAI's PatchDiscriminator returns every layer's features; the GAN losses need only the last."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


def per_b_logits(logits: torch.Tensor, b_index: torch.Tensor) -> torch.Tensor:
    """Pick, for each sample, the logit map of its own target b-value.

    A discriminator with one output map per target b judges single-b images:
    logits (N, n_targets, h, w), b_index (N,) -> (N, 1, h, w).
    """
    return logits.gather(1, b_index.view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[2:]))


def one_b_per_sample(images: torch.Tensor, present: torch.Tensor | None, generator: torch.Generator,
                     preferred: torch.Tensor | None = None):
    """One single-b image per sample, its b drawn at random among the acquired ones (among the acquired
    `preferred` ones (T,) bool, where a sample has any).

    images (N, T, H, W) -> (M, 1, H, W), sample index (M,), b index (M,); samples with
    nothing acquired are dropped. Judging one b per sample instead of all T keeps the
    discriminators' cost that of an ordinary GAN.
    """
    n, t = images.shape[:2]
    if present is None:
        present = torch.ones(n, t, dtype=torch.bool, device=images.device)
    scores = torch.rand(n, t, generator=generator).to(images.device)
    if preferred is not None:
        scores = scores + preferred.to(images.device)[None].float()
    scores = torch.where(present, scores, torch.full_like(scores, -1.0))
    b_index = scores.argmax(1)
    sample = torch.arange(n, device=images.device)
    keep = present[sample, b_index]
    sample, b_index = sample[keep], b_index[keep]
    return images[sample, b_index].unsqueeze(1), sample, b_index


class ImagePool:
    """History of generated images for the discriminator (Shrivastava et al.; CycleGAN's pool of 50).

    Each image travels with its label (here the index of its b-value). Randomness
    comes from the generator passed in, so a resumed run draws the same.
    """

    def __init__(self, size: int = 50):
        self.size = size
        self.images: list[torch.Tensor] = []
        self.labels: list[int] = []

    def query(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        """(N, C, H, W), (N,) -> the same shapes, each item swapped for a stored one with p = 0.5."""
        if self.size == 0:
            return images, labels
        out_images, out_labels = [], []
        for image, label in zip(images.detach(), labels.tolist()):
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.cpu())
                self.labels.append(label)
            elif torch.rand(1, generator=generator).item() > 0.5:
                i = int(torch.randint(self.size, (1,), generator=generator))
                stored, stored_label = self.images[i].to(image.device), self.labels[i]
                self.images[i], self.labels[i] = image.cpu(), label
                image, label = stored, stored_label
            out_images.append(image)
            out_labels.append(label)
        return torch.cat(out_images), torch.tensor(out_labels, device=images.device)

    def state_dict(self) -> dict:
        return {"size": self.size, "images": [i.clone() for i in self.images], "labels": list(self.labels)}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.images, self.labels = state["size"], list(state["images"]), list(state["labels"])


# --- continuous b-value conditioning (stage 2) ---------------------------------------------------
def fourier_features(b: torch.Tensor, n_frequencies: int, b_scale: float = 1000.0) -> torch.Tensor:
    """b (N,) -> (N, 1 + 2 n_frequencies): b/b_scale and sin, cos of 2^k pi b/b_scale.

    A continuous code: nearby b-values get nearby codes, so a network can be asked for a b it never
    saw (a one-hot code has no entry for b = 75 or 850).
    """
    t = (b.float() / b_scale)[:, None]
    angles = math.pi * t * (2.0 ** torch.arange(n_frequencies, device=b.device, dtype=torch.float32))
    return torch.cat([t, torch.sin(angles), torch.cos(angles)], 1)


class FiLMCode(nn.Module):
    """An MLP from a code to FiLM parameters (scale, shift) for `n_blocks` blocks of `channels` channels:
    (N, code) -> (N, n_blocks, 2, channels). The last layer starts at zero, so a fresh one is the identity
    (scale 1 + 0, shift 0) and a miner added on top starts from the pretrained conditioning."""

    def __init__(self, in_features: int, width: int, n_blocks: int, channels: int):
        super().__init__()
        self.n_blocks, self.channels = n_blocks, channels
        self.net = nn.Sequential(nn.Linear(in_features, width), nn.ReLU(True), nn.Linear(width, n_blocks * 2 * channels))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.net(code).view(-1, self.n_blocks, 2, self.channels)


class FiLMResidualBlock(ResidualBlock):
    """A residual block whose residual branch is scaled and shifted per sample: x + (1 + g) body(x) + s."""

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        scale, shift = film[:, 0, :, None, None], film[:, 1, :, None, None]
        return x + (1 + scale) * self.body(x) + shift


class FiLMResnetGenerator(nn.Module):
    """`ResnetGenerator` with every residual block modulated by FiLM parameters (N, n_blocks, 2, 4 ngf)."""

    def __init__(self, in_channels: int, out_channels: int, ngf: int = 64, n_blocks: int = 6,
                 norm: str = "none", upsample: str = "resize", activation: str = "relu"):
        super().__init__()
        self.channels = ngf * 4
        act = lambda: activation_layer(activation)  # noqa: E731
        down = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), norm_layer(norm, ngf), act()]
        for mult in (1, 2):
            down += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1), norm_layer(norm, ngf * mult * 2),
                     act()]
        self.down = nn.Sequential(*down)
        self.blocks = nn.ModuleList(FiLMResidualBlock(self.channels, norm, activation) for _ in range(n_blocks))
        up = []
        for mult in (4, 2):
            up += [upsample_layer(ngf * mult, ngf * mult // 2, upsample), norm_layer(norm, ngf * mult // 2), act()]
        up += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.up = nn.Sequential(*up)

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        h = self.down(x)
        for i, block in enumerate(self.blocks):
            h = block(h, film[:, i])
        return self.up(h)


class ProjectionDiscriminator(nn.Module):
    """Conditional PatchGAN judging an image at a continuous b (Miyato & Koyama's projection):
    logits = w^T h + <embed(b), h> per patch, h the PatchGAN features of [condition, image].

    A discriminator with one output per trained b (`per_b_logits`) has nothing to say at b = 75 or 850;
    the projection's embedding of b is continuous, so it can.
    """

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, n_frequencies: int = 8):
        super().__init__()
        layers, channels = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)], ndf
        for i in range(1, n_layers + 1):
            out = ndf * min(2 ** i, 8)
            layers += [nn.Conv2d(channels, out, 4, stride=2 if i < n_layers else 1, padding=1),
                       nn.InstanceNorm2d(out), nn.LeakyReLU(0.2, True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.logit = nn.Conv2d(channels, 1, 1)
        self.n_frequencies = n_frequencies
        self.embed = nn.Linear(1 + 2 * n_frequencies, channels)

    def forward(self, image: torch.Tensor, b: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = self.features(torch.cat([condition, image], 1))
        projection = (h * self.embed(fourier_features(b, self.n_frequencies))[:, :, None, None]).sum(1, keepdim=True)
        return self.logit(h) + projection


# --- wavelets (JMMDA-GAN) --------------------------------------------------------------------------
WAVELETS = ("haar", "db2", "sym4", "coif1")  # orthogonal: the inverse transform is the adjoint


def _wavelet_kernels(wavelet: str) -> torch.Tensor:
    """The 2D analysis kernels (4, L, L) of an orthogonal wavelet, in pywt's order: approximation, then
    horizontal, vertical and diagonal detail (pywt.dwt2's cA, (cH, cV, cD)); rows index H, columns W.

    pywt lists dec_lo / dec_hi as convolution filters; conv2d correlates, hence the reversal."""
    import pywt

    if wavelet not in WAVELETS:
        raise ValueError(f"wavelet must be one of {WAVELETS}, not {wavelet!r}")
    bank = pywt.Wavelet(wavelet)
    lo = torch.tensor(bank.dec_lo[::-1], dtype=torch.float64)
    hi = torch.tensor(bank.dec_hi[::-1], dtype=torch.float64)
    pairs = ((lo, lo), (hi, lo), (lo, hi), (hi, hi))  # (along H, along W)
    return torch.stack([torch.outer(along_h, along_w) for along_h, along_w in pairs]).float()


def _periodic_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Wrap `pad` rows and columns around each side of (N, C, H, W); pad may exceed H or W (tiny maps)."""
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    periods_h, periods_w = -(-pad // h), -(-pad // w)
    tiled = x.repeat(1, 1, 1 + 2 * periods_h, 1 + 2 * periods_w)
    return tiled[..., periods_h * h - pad: periods_h * h + h + pad, periods_w * w - pad: periods_w * w + w + pad]


def _periodic_fold(y: torch.Tensor, pad: int, h: int, w: int) -> torch.Tensor:
    """Adjoint of `_periodic_pad`: (N, C, h + 2 pad, w + 2 pad) -> (N, C, h, w), every wrapped row and column
    added back onto the one it copied."""
    if pad == 0:
        return y
    periods_h, periods_w = -(-pad // h), -(-pad // w)
    # zero-pad to whole periods starting at a multiple of the period, then sum the periods
    y = F.pad(y, (periods_w * w - pad,) * 2 + (periods_h * h - pad,) * 2)
    n, c = y.shape[:2]
    y = y.reshape(n, c, 1 + 2 * periods_h, h, 1 + 2 * periods_w, w)
    return y.sum(dim=(2, 4))


class DWT2d(nn.Module):
    """Single-level 2D discrete wavelet transform of every channel, periodic boundary (pywt's 'periodization').

    (N, C, H, W), H and W even -> ll (N, C, H/2, W/2), high (N, 3C, H/2, W/2): the horizontal, vertical and
    diagonal details as three blocks of C channels (high.chunk(3, 1)). Orthonormal, so a constant image's ll
    is 2x the constant (Haar) and `IDWT2d` inverts it exactly. The filters are fixed buffers, not parameters.
    """

    def __init__(self, wavelet: str = "haar"):
        super().__init__()
        self.register_buffer("kernels", _wavelet_kernels(wavelet), persistent=False)
        self.pad = self.kernels.shape[-1] // 2 - 1  # wrap (L/2 - 1) each side: pywt's alignment of the samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"DWT2d needs even H and W, not {h}x{w}; pad the image to a multiple of 2**levels")
        weight = self.kernels.to(x.dtype).repeat(c, 1, 1).unsqueeze(1)  # (4C, 1, L, L): channel-major
        bands = F.conv2d(_periodic_pad(x, self.pad), weight, stride=2, groups=c)
        bands = bands.reshape(n, c, 4, h // 2, w // 2)
        return bands[:, :, 0], bands[:, :, 1:].transpose(1, 2).reshape(n, 3 * c, h // 2, w // 2)


class IDWT2d(nn.Module):
    """Inverse of `DWT2d`: ll (N, C, h, w), high (N, 3C, h, w) -> (N, C, 2h, 2w).

    The adjoint of the analysis (transposed conv with the same kernels, wrapped borders folded back), which for
    an orthonormal filter bank is its inverse.
    """

    def __init__(self, wavelet: str = "haar"):
        super().__init__()
        self.register_buffer("kernels", _wavelet_kernels(wavelet), persistent=False)
        self.pad = self.kernels.shape[-1] // 2 - 1

    def forward(self, ll: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        n, c, h, w = ll.shape
        bands = torch.cat([ll.unsqueeze(2), high.reshape(n, 3, c, h, w).transpose(1, 2)], 2)
        weight = self.kernels.to(bands.dtype).repeat(c, 1, 1).unsqueeze(1)
        y = F.conv_transpose2d(bands.reshape(n, 4 * c, h, w), weight, stride=2, groups=c)
        return _periodic_fold(y, self.pad, 2 * h, 2 * w)
