"""What the command line shows of a running farm: a video's summary, a transcode's progress bar, and
an API error as one line. Shared by `vidfarm` (cli.py) and `vidfarm demo` (demo.py), which is why it
is neither of them."""

from __future__ import annotations

import sys

import click

from vidfarm.states import VideoStatus


def api_call(fn, *args, **kwargs):
    """`fn`'s answer; an API refusal or an unreachable API ends the command with one clear line."""
    import httpx

    from vidfarm.client import ApiClientError

    try:
        return fn(*args, **kwargs)
    except ApiClientError as exc:
        raise click.ClickException(str(exc)) from exc
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the API: {exc}") from exc


def wait_with_bar(client, video_id: str) -> dict:
    """Follows the transcode to its end. The HLS URL is printed (stdout) as soon as the video is
    playable, while it is still processing: a player can start there and then."""
    with click.progressbar(length=100, label="transcode", file=sys.stderr, show_percent=True) as bar:
        shown = {"value": 0, "playable": False}

        def advance(video: dict) -> None:
            if video.get("playback") and video["status"] == VideoStatus.PROCESSING and not shown["playable"]:
                shown["playable"] = True
                click.echo(f"playable  {video['playback']['hls']}")
            target = int(video["progress"]) if video["status"] != VideoStatus.READY else 100
            if target > shown["value"]:
                bar.update(target - shown["value"])
                shown["value"] = target

        return api_call(client.wait, video_id, advance)


def quality_text(quality: dict | None) -> str:
    if not quality:
        return "not scored"
    return (f"VMAF {quality['vmaf_mean']:.1f} (p5 {quality['vmaf_p5']:.1f})  PSNR {quality['psnr_db']:.1f} dB  "
            f"{quality['frames_scored']} frames scored")


def print_video(video: dict) -> None:
    click.echo(f"{video['id']}  {video['status']}  {video['progress']:.0f}%  attempts={video['attempts']}")
    if video.get("error"):
        click.echo(f"  error: {video['error']['code']}: {video['error']['message']}")
    for rendition in video.get("renditions", []):
        click.echo(f"  {rendition['name']:>6} {rendition['width']}x{rendition['height']} "
                   f"{rendition['bitrate_kbps']} kb/s  {quality_text(rendition.get('quality'))}  {rendition['url']}")
    if video.get("poster_url"):
        click.echo(f"  poster {video['poster_url']}")
    if video.get("playback"):
        # Signed URLs a player opens as they are (no header): ffplay, VLC, hls.js, dash.js, Safari.
        click.echo(f"  hls    {video['playback']['hls']}")
        if video["playback"]["dash"]:  # null while processing: DASH waits for ready
            click.echo(f"  dash   {video['playback']['dash']}")
