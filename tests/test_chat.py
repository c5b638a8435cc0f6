"""Chat: templates against transformers' rendering, Model.chat and kvrt-cli chat."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import termios
import time

import pytest
from conftest import run_cli

kvrt = pytest.importorskip("kvrt")
_core = kvrt._core

# Published templates (tokenizer_config.json "chat_template", JSON-decoded).

# meta-llama/Meta-Llama-3-8B-Instruct
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# meta-llama/Llama-3.1-8B-Instruct (also 3.3)
LLAMA31 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""  # noqa: E501

# meta-llama/Llama-3.2-1B-Instruct: 3.1's template, but today's date when the
# renderer offers strftime_now (transformers does).
LLAMA32 = LLAMA31.replace(
    """    {%- set date_string = "26 Jul 2024" %}""",
    """    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}""",
)

# meta-llama/Llama-2-7b-chat-hf
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation"
    " roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + "
    "system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}"
    "{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

# mistralai/Mistral-7B-Instruct-v0.1 (no system role)
MISTRAL_V0 = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
    "roles are supported!') }}{% endif %}{% endfor %}"
)

# mistralai/Mistral-7B-Instruct-v0.2 (updated template with a system prompt: "v1")
MISTRAL_V1 = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""  # noqa: E501

# mistralai/Mistral-7B-Instruct-v0.3 and Mistral-Large-Instruct-2407 ("v3")
MISTRAL_V3 = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""  # noqa: E501

# mistralai/Mistral-Nemo-Instruct-2407 ("v3-tekken"): v3 without the spaces
# after [INST], [AVAILABLE_TOOLS], [TOOL_CALLS], [TOOL_RESULTS], and with the
# assistant's content neither trimmed nor preceded by a space.
MISTRAL_V3_TEKKEN = (
    MISTRAL_V3.replace('"[INST] "', '"[INST]"')
    .replace("[AVAILABLE_TOOLS] [", "[AVAILABLE_TOOLS][")
    .replace("[TOOL_CALLS] [", "[TOOL_CALLS][")
    .replace("[TOOL_RESULTS] {", "[TOOL_RESULTS]{")
    .replace('" " + message["content"]|trim + eos_token', 'message["content"] + eos_token')
)

# mistralai/Mistral-Large-Instruct-2411 ("v7")
MISTRAL_V7 = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + '[/INST]' }}{% elif message['role'] == 'system' %}"
    "{{ '[SYSTEM_PROMPT] ' + message['content'] + '[/SYSTEM_PROMPT]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user, system and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

# Qwen/Qwen2.5-*-Instruct: ChatML with its own default system prompt.
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""  # noqa: E501

TEMPLATES = {
    "llama3": LLAMA3,
    "llama3.1": LLAMA31,
    "llama3.2": LLAMA32,
    "llama2": LLAMA2,
    "mistral-v0": MISTRAL_V0,
    "mistral-v1": MISTRAL_V1,
    "mistral-v3": MISTRAL_V3,
    "mistral-v3-tekken": MISTRAL_V3_TEKKEN,
    "mistral-v7": MISTRAL_V7,
    "chatml": QWEN25,
}


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


CONVERSATIONS = [
    _msgs(("user", "Hello")),
    _msgs(("system", "You are terse."), ("user", "Hello")),
    _msgs(
        ("system", "  Answer in French. \n"),
        ("user", "Who are you?"),
        ("assistant", "   I am an assistant   "),
        ("user", "Another question\n"),
    ),
    _msgs(("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke.")),
    _msgs(("user", "Hi"), ("assistant", "Hello!")),
    _msgs(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!")),
    _msgs(("assistant", "I start."), ("user", "Hi")),
]


def _render_jinja(template, messages, add_generation_prompt, bos="<s>", eos="</s>"):
    """transformers' own renderer: its jinja2 environment and globals."""
    from transformers.utils.chat_template_utils import render_jinja_template

    out, _ = render_jinja_template(
        conversations=[messages],
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos,
        eos_token=eos,
    )
    return out[0]


def _render_kvrt(template, messages, add_generation_prompt, bos="<s>", eos="</s>", name=""):
    pairs = [(m["role"], m["content"]) for m in messages]
    return _core.chat_template_apply(template, pairs, add_generation_prompt, bos, eos, name)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_template_equals_transformers(name):
    pytest.importorskip("transformers")
    jinja2 = pytest.importorskip("jinja2")
    template = TEMPLATES[name]
    family = "llama3.1" if name == "llama3.2" else name
    assert _core.chat_template_family(template) == family
    n_rendered = 0
    for messages in CONVERSATIONS:
        for agp in (True, False):
            try:
                want = _render_jinja(template, messages, agp)
            except jinja2.exceptions.TemplateError:
                # The template rejects the conversation: so must kvrt.
                with pytest.raises(RuntimeError, match="chat template"):
                    _render_kvrt(template, messages, agp)
                continue
            assert _render_kvrt(template, messages, agp) == want, (family, messages, agp)
            n_rendered += 1
    assert n_rendered >= 6


@pytest.fixture(scope="module")
def hf_tokenizer(model_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name
    )


@pytest.fixture(scope="module")
def model(model_path):
    return kvrt.Model(model_path, n_ctx=1024, n_threads=2)


def test_smollm2_template_equals_transformers(model, hf_tokenizer):
    jinja = model.metadata["tokenizer.chat_template"]
    assert jinja == hf_tokenizer.chat_template
    assert _core.chat_template_family(jinja) == "chatml"
    for messages in CONVERSATIONS:
        for agp in (True, False):
            want = hf_tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=agp
            )
            assert model.apply_chat_template(messages, agp) == want, (messages, agp)
            # Tokens too: the template has no BOS and none is added.
            want_ids = hf_tokenizer.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=agp
            )
            if not isinstance(want_ids, list):  # a BatchEncoding in newer transformers
                want_ids = want_ids["input_ids"]
            assert model.tokenize(want, False, True) == list(want_ids)
    # Without a system message SmolLM2 writes its own.
    text = model.apply_chat_template(_msgs(("user", "Hi")))
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_bos_written_by_template_only(model):
    # llama3 writes the BOS text itself; tokenizing must not add another.
    bos = model.detokenize([model.bos_id], True)
    text = model.apply_chat_template(_msgs(("user", "Hi")), chat_template="llama3")
    assert text.startswith(bos) and text.count(bos) == 1
    ids = model.tokenize(text, False, True)
    assert ids[0] == model.bos_id and ids.count(model.bos_id) == 1


def test_template_errors_and_override():
    with pytest.raises(RuntimeError, match="chat template not understood; supported: chatml"):
        _core.chat_template_family("{% for m in messages %}{{ m.content }}{% endfor %}")
    with pytest.raises(RuntimeError, match="unknown chat template 'vicuna'"):
        _core.chat_template_family(LLAMA3, "vicuna")
    msgs = _msgs(("user", "Hi"))
    # A family by name formats whatever the model's template is.
    assert _render_kvrt("", msgs, True, name="llama3") == _render_jinja(LLAMA3, msgs, True)
    assert _core.chat_template_family("", "mistral-v7") == "mistral-v7"


# -- Model.chat ---------------------------------------------------------------

GREEDY = dict(max_tokens=16, temperature=0)
Q1 = _msgs(("user", "What is the capital of France?"))


def _common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_chat_two_turns_reuses_cache(model):
    model.reset()
    r1 = model.chat(Q1, **GREEDY)
    assert "Paris" in r1
    ids1 = model.tokenize(model.apply_chat_template(Q1), False, True)
    assert model.chat_stats == {"n_tokens": len(ids1), "n_cached": 0, "n_evaluated": len(ids1)}
    gen1 = list(model._chat_state[1].tokens)
    assert model.n_past == len(ids1) + len(gen1) - 1

    q2 = Q1 + _msgs(("assistant", r1), ("user", "And of Germany?"))
    r2 = model.chat(q2, **GREEDY)
    ids2 = model.tokenize(model.apply_chat_template(q2), False, True)
    cached = _common_prefix(ids1 + gen1[:-1], ids2)
    assert cached > len(ids1)  # the first prompt and the reply stay cached
    assert model.chat_stats == {
        "n_tokens": len(ids2),
        "n_cached": cached,
        "n_evaluated": len(ids2) - cached,
    }
    assert "Berlin" in r2

    # Deterministic, and the same as from an empty cache.
    model.reset()
    assert model.chat(q2, **GREEDY) == r2
    assert model.chat_stats["n_cached"] == 0


def test_chat_stream_equals_text(model):
    msgs = _msgs(("user", "Tell me a story about a dragon."))
    model.reset()
    text = model.chat(msgs, max_tokens=24, seed=3)
    model.reset()
    pieces = list(model.chat(msgs, max_tokens=24, seed=3, stream=True))
    assert len(pieces) > 1
    assert "".join(pieces) == text
    # Asking again with the cache full of the same conversation: same reply.
    assert model.chat(msgs, max_tokens=24, seed=3) == text


def test_chat_interrupted_stream_leaves_model_usable(model):
    story = _msgs(("user", "Tell me a story about a dragon."))
    model.reset()
    reference = model.chat(Q1, **GREEDY)
    model.chat(story, max_tokens=64, temperature=0)  # something in the cache
    got = []
    with pytest.raises(KeyboardInterrupt):
        for piece in model.chat(story + _msgs(("user", "Go on.")), max_tokens=64, stream=True):
            got.append(piece)
            if len(got) == 2:
                signal.raise_signal(signal.SIGINT)
    assert len(got) >= 2
    assert model.chat(Q1, **GREEDY) == reference


# -- kvrt-cli chat --------------------------------------------------------------


class _ChatSession:
    """kvrt-cli chat on a pseudo-terminal (stdin and stdout), stderr on a pipe."""

    def __init__(self, cli, *args):
        self.master, slave = os.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO  # the typed line is not part of the output
        attrs[1] &= ~termios.ONLCR
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.proc = subprocess.Popen(
            [cli, "chat", *map(str, args)], stdin=slave, stdout=slave, stderr=subprocess.PIPE
        )
        os.close(slave)
        self.buf = b""

    def read_until(self, marker: bytes, timeout=120) -> bytes:
        """Output up to and including the next `marker`."""
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} in {self.buf!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"output ended before {marker!r}: {self.buf!r}"
                self.buf += chunk
        at = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:at], self.buf[at:]
        return out

    def say(self, line: str) -> str:
        os.write(self.master, line.encode() + b"\n")
        return self.read_until(b"\n> ")[: -len(b"\n> ")].decode()

    def finish(self, timeout=60):
        os.write(self.master, b"\x04")  # Ctrl-D: end of input at the prompt
        rc = self.proc.wait(timeout=timeout)
        err = self.proc.stderr.read().decode()
        os.close(self.master)
        return rc, err


def test_cli_chat_two_turns(cli, model_path, model):
    s = _ChatSession(cli, "-m", model_path, "--temp", 0, "-n", 16, "-t", 2, "-c", 1024)
    assert s.read_until(b"> ") == b"> "
    r1 = s.say("What is the capital of France?")
    r2 = s.say("And of Germany?")
    rc, err = s.finish()
    assert rc == 0, err
    assert "chat: template chatml" in err
    # The same conversation through Model.chat gives the same replies.
    model.reset()
    assert r1 == model.chat(Q1, **GREEDY)
    q2 = Q1 + _msgs(("assistant", r1), ("user", "And of Germany?"))
    assert r2 == model.chat(q2, **GREEDY)
    assert "Paris" in r1 and "Berlin" in r2
    # Turn two evaluated only what the cache did not hold.
    lines = [ln for ln in err.splitlines() if "new prompt tokens" in ln]
    assert len(lines) == 2
    assert "(0 cached)" in lines[0] and "(0 cached)" not in lines[1]


def test_cli_chat_sigint_stops_reply(cli, model_path):
    s = _ChatSession(cli, "-m", model_path, "--temp", 0, "-n", 400, "-t", 2, "-c", 1024)
    s.read_until(b"> ")
    os.write(s.master, b"Tell me a long story about a dragon.\n")
    s.read_until(b" ")  # the reply has started streaming
    s.proc.send_signal(signal.SIGINT)
    s.read_until(b"\n> ")  # back at the prompt, still running
    assert s.proc.poll() is None
    reply = s.say("What is the capital of France?")
    assert reply.strip()
    rc, err = s.finish()
    assert rc == 0, err
    assert "chat: reply interrupted" in err


def test_cli_chat_sigint_at_prompt_ends(cli, model_path):
    s = _ChatSession(cli, "-m", model_path, "-t", 2, "-c", 256)
    s.read_until(b"> ")
    s.proc.send_signal(signal.SIGINT)
    assert s.proc.wait(timeout=60) == 130
    os.close(s.master)


def test_cli_chat_context_full(cli, model_path):
    r = subprocess.run(
        [cli, "chat", "-m", model_path, "--temp", "0", "-c", "40", "-t", "2"],
        input="What is the capital of France?\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert "the context is full (40 tokens); raise -c" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--chat-template", "vicuna"], "unknown chat template 'vicuna'; supported: chatml"),
        (["--chat-template", "mistral-v0", "--system", "Be brief."], "roles must alternate"),
        (["--temp", "hot"], "not a number"),
    ],
)
def test_cli_chat_bad_input(cli, model_path, args, message):
    r = run_cli(cli, "chat", "-m", model_path, *args)
    assert r.returncode != 0
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
