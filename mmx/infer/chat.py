"""Interactive multi-turn chat (``mmx infer --chat``): every turn re-encodes the whole conversation.

Images and videos of earlier turns stay in the conversation (the chat template places them where they were given),
so a later question can refer to them. Lines typed at the prompt::

    /image PATH     attach an image to the next message     /video PATH   attach a video to the next message
    /reset          forget the conversation                 /exit         leave (end of input works too)
    anything else   a user message; the reply is printed on stdout

Prompts and notices go to stderr, so stdout holds only the replies.
"""
import sys

from mmx.infer.prompts import user_message

HELP = "commands: /image PATH, /video PATH, /reset, /exit; anything else is a message"


def run(pipeline, lines, out, images=(), videos=(), **overrides):
    """Chat over ``lines`` (an iterable of input lines, e.g. sys.stdin); ``images``/``videos`` attach to the first
    message. Returns the conversation (chat messages, replies included)."""
    conversation, pending_images, pending_videos = [], list(images), list(videos)
    print(f"mmx chat ({HELP})", file=sys.stderr)
    for line in _prompted(lines):
        line = line.strip()
        if not line:
            continue
        command, _, argument = line.partition(" ")
        if command == "/exit":
            break
        if command == "/reset":
            conversation, pending_images, pending_videos = [], [], []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if command in ("/image", "/video"):
            if not argument.strip():
                print(f"{command} needs a path", file=sys.stderr)
                continue
            (pending_images if command == "/image" else pending_videos).append(argument.strip())
            continue
        if command.startswith("/"):
            print(f"unknown command {command}; {HELP}", file=sys.stderr)
            continue
        message = user_message(line, images=pending_images, videos=pending_videos)
        try:
            reply = pipeline.generate([conversation + [message]], **overrides)[0]
        except ValueError as err:   # a missing file, say: the conversation stays as it was
            print(f"error: {err}", file=sys.stderr)
            pending_images, pending_videos = [], []
            continue
        conversation += [message, {"role": "assistant", "content": reply.text}]
        pending_images, pending_videos = [], []
        out.write(reply.text + "\n")
        out.flush()
    return conversation


def _prompted(lines):
    """The input lines, each asked for with a "> " on stderr."""
    iterator = iter(lines)
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = next(iterator, None)
        if line is None:
            print(file=sys.stderr)
            return
        yield line
